package tests

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-cluster/shoal/gossip"
	"github.com/shoal-cluster/shoal/internal/clientcreds"
	"github.com/shoal-cluster/shoal/internal/datadir"
	"github.com/shoal-cluster/shoal/internal/joinclient"
	"github.com/shoal-cluster/shoal/internal/pki"
	"github.com/shoal-cluster/shoal/internal/pki/pkitest"
	"github.com/shoal-cluster/shoal/internal/rpc"
	"github.com/shoal-cluster/shoal/manager"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// credsOf are the credentials in a node's data dir (the admin client
// config for the node that ran init).
func credsOf(t *testing.T, dataDir string) *rpc.Credentials {
	t.Helper()
	creds, _, err := clientcreds.Find(dataDir, "")
	if err != nil {
		t.Fatal(err)
	}
	return creds
}

// nodeCreds are the node certificate's credentials in a data dir.
func nodeCreds(t *testing.T, dataDir string) *rpc.Credentials {
	t.Helper()
	certPEM, keyPEM, rootsPEM, err := datadir.LoadCerts(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := rpc.NewCredentials(certPEM, keyPEM, rootsPEM)
	if err != nil {
		t.Fatal(err)
	}
	return creds
}

// dial connects to a node whose certificate has role, with creds.
func dial(t *testing.T, addr string, creds *rpc.Credentials, role string) *grpc.ClientConn {
	t.Helper()
	conn, err := rpc.DialRole(addr, creds, role)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// rawTLS presents a certificate to addr without any client-side check and
// returns how the server answered the first read.
func rawTLS(addr string, certPEM, keyPEM []byte) error {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}
	if certPEM != nil {
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return err
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte{0}); err != nil { // a Raft RPC type byte
		return err
	}
	_, err = c.Read(make([]byte, 1))
	return err
}

func raftAddr(m *mgr) string {
	return net.JoinHostPort(m.cfg.AdvertiseIP, strconv.Itoa(m.cfg.APIPort+1))
}

func workerAddr(w *wrk) string {
	return net.JoinHostPort(w.cfg.AdvertiseIP, strconv.Itoa(w.cfg.APIPort))
}

func listNodes(t *testing.T, ctl pb.ControlClient) []*pb.Node {
	t.Helper()
	resp, err := ctl.ListNodes(callCtx(t), &pb.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetNodes()
}

// TestSecurityRefusals: every refusal happens over a real TLS handshake
// against real nodes, and changes nothing.
func TestSecurityRefusals(t *testing.T) {
	c := newCluster(t)
	c.addManagers(1)
	c.addWorkers(2)
	m := c.managers[0]
	w1, w2 := c.workers[0], c.workers[1]
	admin := c.control(m)
	before := len(listNodes(t, admin))
	workerCreds := nodeCreds(t, w1.cfg.DataDir)
	asWorker := dial(t, m.cfg.APIAddr(), workerCreds, pki.RoleManager)

	t.Run("plaintext gRPC clients", func(t *testing.T) {
		for name, addr := range map[string]string{"manager": m.cfg.APIAddr(), "worker": workerAddr(w1)} {
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			_, err = pb.NewControlClient(conn).ListNodes(callCtx(t), &pb.ListNodesRequest{})
			conn.Close()
			if status.Code(err) != codes.Unavailable {
				t.Errorf("plaintext client of the %s: %v, want the connection refused", name, err)
			}
		}
	})
	t.Run("plaintext Raft peer", func(t *testing.T) {
		conn, err := net.DialTimeout("tcp", raftAddr(m), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = conn.Write([]byte{0, 1, 2, 3, 4, 5, 6, 7})
		if n, err := conn.Read(make([]byte, 64)); err == nil {
			// A TLS server answers a plaintext client with an alert record
			// (type 21) at most, then closes.
			if n > 0 {
				if _, err := conn.Read(make([]byte, 64)); err == nil {
					t.Fatal("the Raft port kept talking to a plaintext peer")
				}
			}
		}
	})
	t.Run("worker certificate on the Raft transport", func(t *testing.T) {
		certPEM, keyPEM, _, err := datadir.LoadCerts(w1.cfg.DataDir)
		if err != nil {
			t.Fatal(err)
		}
		if err := rawTLS(raftAddr(m), certPEM, keyPEM); err == nil || !strings.Contains(err.Error(), "bad certificate") {
			t.Fatalf("Raft with a worker certificate: %v, want the certificate refused", err)
		}
	})
	t.Run("forged manager certificate on the Raft transport", func(t *testing.T) {
		forger := pkitest.NewCA(t, m.m.ClusterID())
		certPEM, keyPEM := forger.Issue(t, pki.RoleManager, m.m.ID(), time.Hour)
		if err := rawTLS(raftAddr(m), certPEM, keyPEM); err == nil || !strings.Contains(err.Error(), "bad certificate") {
			t.Fatalf("Raft with a forged certificate: %v, want the certificate refused", err)
		}
	})
	t.Run("no certificate on the Raft transport", func(t *testing.T) {
		if err := rawTLS(raftAddr(m), nil, nil); err == nil {
			t.Fatal("Raft served a peer without a certificate")
		}
	})
	t.Run("worker calls the control API", func(t *testing.T) {
		ctl := pb.NewControlClient(asWorker)
		_, err := ctl.ListNodes(callCtx(t), &pb.ListNodesRequest{})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "may not use the control API") {
			t.Fatalf("worker ListNodes: %v", err)
		}
		_, err = ctl.CreateService(callCtx(t), &pb.CreateServiceRequest{Spec: &pb.ServiceSpec{Annotations: &pb.Annotations{Name: "evil"}}})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("worker CreateService: %v", err)
		}
		_, err = ctl.RotateRootCA(callCtx(t), &pb.RotateRootCARequest{})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("worker RotateRootCA: %v", err)
		}
		resp, err := admin.ListServices(callCtx(t), &pb.ListServicesRequest{})
		if err != nil || len(resp.GetServices()) != 0 {
			t.Fatalf("services after the refused calls: %v, %v", resp.GetServices(), err)
		}
	})
	t.Run("worker asks for Raft status", func(t *testing.T) {
		_, err := pb.NewMembershipClient(asWorker).RaftStatus(callCtx(t), &pb.RaftStatusRequest{})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("worker RaftStatus: %v", err)
		}
	})
	t.Run("worker makes another node leave", func(t *testing.T) {
		_, err := pb.NewMembershipClient(asWorker).Leave(callCtx(t), &pb.LeaveRequest{NodeId: w2.a.ID()})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "may not act as node") {
			t.Fatalf("worker Leave for another node: %v", err)
		}
	})
	t.Run("token holder claims an existing node's ID", func(t *testing.T) {
		creds, err := joinclient.TokenCredentials(c.token(pb.NodeRole_NODE_ROLE_WORKER))
		if err != nil {
			t.Fatal(err)
		}
		key, _, err := pki.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		csr, err := pki.NewCSR(key)
		if err != nil {
			t.Fatal(err)
		}
		_, err = joinclient.Join(callCtx(t), m.cfg.APIAddr(), creds, &pb.JoinRequest{Token: c.token(pb.NodeRole_NODE_ROLE_WORKER),
			NodeId: w1.a.ID(), ApiAddr: workerAddr(w1), Csr: csr, Description: &pb.NodeDescription{Hostname: "w1"}})
		if err == nil || !strings.Contains(err.Error(), "is taken") {
			t.Fatalf("join as an existing node: %v, want its ID refused", err)
		}
	})
	t.Run("client without a certificate", func(t *testing.T) {
		root, err := pki.ParseCerts(workerCreds.RootsPEM())
		if err != nil {
			t.Fatal(err)
		}
		conn := dial(t, m.cfg.APIAddr(), rpc.PinnedCredentials(pki.Digest(root[0])), pki.RoleManager)
		_, err = pb.NewControlClient(conn).ListNodes(callCtx(t), &pb.ListNodesRequest{})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("ListNodes without a certificate: %v", err)
		}
	})
	t.Run("admin calls a worker's API", func(t *testing.T) {
		conn := dial(t, workerAddr(w1), credsOf(t, m.cfg.DataDir), pki.RoleWorker)
		stream, err := pb.NewTaskLogsClient(conn).Logs(callCtx(t), &pb.TaskLogsRequest{TaskId: "x"})
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("admin TaskLogs on a worker: %v", err)
		}
	})
	t.Run("gossip with the wrong key", func(t *testing.T) {
		g, err := gossip.New(gossip.Config{
			Meta:      gossip.Meta{NodeID: "intruder", Role: gossip.RoleWorker, API: c.ip(40) + ":1"},
			BindIP:    c.ip(40),
			ClusterID: m.m.ClusterID(),
			Keys:      [][]byte{gossip.NewKey()},
			Fast:      true,
			Logger:    slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatal(err)
		}
		defer g.Shutdown()
		gaddr, _ := manager.GossipAddrOf(m.cfg.APIAddr())
		if n, err := g.Join([]string{gaddr}); err == nil && n > 0 {
			t.Fatal("a gossip member with the wrong key joined")
		}
		for _, mem := range m.m.Gossip().Members() {
			if mem.NodeID == "intruder" {
				t.Fatal("the manager lists the intruder")
			}
		}
	})
	if got := len(listNodes(t, admin)); got != before {
		t.Fatalf("%d nodes after the refusals, want %d", got, before)
	}

	t.Run("a removed node comes back", func(t *testing.T) {
		id := w2.a.ID()
		creds := nodeCreds(t, w2.cfg.DataDir)
		w2.a.Close()
		if _, err := admin.RemoveNode(callCtx(t), &pb.RemoveNodeRequest{Ref: id, Force: true}); err != nil {
			t.Fatal(err)
		}
		// Its certificate has not expired, but it is refused at once.
		conn := dial(t, m.cfg.APIAddr(), creds, pki.RoleManager)
		stream, err := pb.NewDispatcherClient(conn).Session(callCtx(t), &pb.SessionRequest{NodeId: id})
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "removed") {
			t.Fatalf("session of a removed node: %v", err)
		}
		_, err = pb.NewMembershipClient(conn).RenewCertificate(callCtx(t), &pb.RenewCertificateRequest{})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("certificate renewal of a removed node: %v", err)
		}
		// Restarted on its old data dir, the node learns it was removed.
		c.restartWorker(w2)
		select {
		case <-w2.a.Removed():
		case <-time.After(30 * time.Second):
			t.Fatal("the removed node was not told it was removed")
		}
		for _, n := range listNodes(t, admin) {
			if n.GetId() == id {
				t.Fatal("the removed node is back in the cluster")
			}
		}
	})
}

// TestCertificateRenewalKeepsSession: with a 3s certificate lifetime,
// nodes renew every 2s; the worker's session outlives several of its
// certificates, the first of which expires meanwhile.
func TestCertificateRenewalKeepsSession(t *testing.T) {
	c := newCluster(t)
	c.certExpiry = 3 * time.Second
	c.addManagers(1)
	c.addWorkers(1)
	m, w := c.managers[0], c.workers[0]
	task := c.createTask(w.a.ID(), "sleep 60")
	c.waitTaskState(task, pb.TaskState_TASK_STATE_RUNNING, 20*time.Second)
	session := w.a.SessionID()
	if session == "" {
		t.Fatal("no session")
	}
	first := nodeCreds(t, w.cfg.DataDir).Leaf()
	serials := map[string]bool{}
	managerSerials := map[string]bool{}
	c.eventually(30*time.Second, "three worker certificates, two manager ones, and the first worker certificate expired", func() (bool, string) {
		m.m.Store().View(func(tx *raftstore.Tx) {
			if n, ok := tx.Nodes().Get(w.a.ID()); ok {
				serials[n.GetCertificate().GetSerial()] = true
			}
			if n, ok := tx.Nodes().Get(m.m.ID()); ok {
				managerSerials[n.GetCertificate().GetSerial()] = true
			}
		})
		return len(serials) >= 3 && len(managerSerials) >= 2 && time.Now().After(first.NotAfter),
			fmt.Sprintf("%d worker and %d manager certificates", len(serials), len(managerSerials))
	})
	if got := w.a.SessionID(); got != session {
		t.Fatalf("the session changed from %s to %s across renewals", session, got)
	}
	if now := nodeCreds(t, w.cfg.DataDir).Leaf(); now.SerialNumber.Cmp(first.SerialNumber) == 0 || time.Now().After(now.NotAfter) {
		t.Fatalf("the worker's certificate on disk was not renewed (serial %s, expires %s)", now.SerialNumber, now.NotAfter)
	}
	if got := c.task(task).GetStatus().GetState(); got != pb.TaskState_TASK_STATE_RUNNING {
		t.Fatalf("task is %s after the renewals", got)
	}
	if got := c.nodeState(m, w.a.ID()); got != pb.NodeState_NODE_STATE_READY {
		t.Fatalf("worker is %s after the renewals", got)
	}
}

// TestRootCARotationWithLiveWorkers rotates the root CA of a cluster of
// three managers and two workers running a task: no node drops out, every
// node ends with a certificate of the new root, the old root is no longer
// trusted, and the old join token no longer admits anyone.
func TestRootCARotationWithLiveWorkers(t *testing.T) {
	c := newCluster(t)
	c.addManagers(3)
	c.addWorkers(2)
	w := c.workers[0]
	task := c.createTask(w.a.ID(), "sleep 120")
	c.waitTaskState(task, pb.TaskState_TASK_STATE_RUNNING, 20*time.Second)
	oldToken := c.token(pb.NodeRole_NODE_ROLE_WORKER)
	admin := c.control(c.managers[0])

	resp, err := admin.RotateRootCA(callCtx(t), &pb.RotateRootCARequest{})
	if err != nil {
		t.Fatal(err)
	}
	digest := resp.GetDigest()
	if _, err := admin.RotateRootCA(callCtx(t), &pb.RotateRootCARequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("a second rotation during the first: %v, want FailedPrecondition", err)
	}
	c.eventually(60*time.Second, "the rotation to complete", func() (bool, string) {
		var info string
		var done bool
		c.leader().m.Store().View(func(tx *raftstore.Tx) {
			r := tx.Cluster().GetRootCa()
			done = r.GetDigest() == digest && len(r.GetCrossSigned()) == 0 && bytes.Equal(r.GetTrustBundle(), r.GetCert())
			for _, n := range tx.Nodes().List() {
				info += fmt.Sprintf("%s:%v ", n.GetDescription().GetHostname(), n.GetCertificate().GetRootDigest() == digest)
			}
		})
		return done, info
	})
	for _, dir := range []string{c.managers[0].cfg.DataDir, c.managers[1].cfg.DataDir, c.managers[2].cfg.DataDir, c.workers[0].cfg.DataDir, c.workers[1].cfg.DataDir} {
		c.eventually(10*time.Second, "every node to trust the new root alone", func() (bool, string) {
			creds := nodeCreds(t, dir)
			roots, err := pki.ParseCerts(creds.RootsPEM())
			if err != nil {
				return false, err.Error()
			}
			return len(roots) == 1 && pki.Digest(roots[0]) == digest, fmt.Sprintf("%s trusts %d roots", dir, len(roots))
		})
	}
	if got := c.task(task).GetStatus().GetState(); got != pb.TaskState_TASK_STATE_RUNNING {
		t.Fatalf("task is %s after the rotation", got)
	}
	for _, wk := range c.workers {
		if got := c.nodeState(c.leader(), wk.a.ID()); got != pb.NodeState_NODE_STATE_READY {
			t.Fatalf("worker %s is %s after the rotation", wk.a.ID(), got)
		}
	}
	// New connections work: a new task runs, the admin config in the data
	// dir was renewed with the new root.
	c.eventually(20*time.Second, "the admin client config to trust the new root", func() (bool, string) {
		cc, err := clientcreds.Read(c.managers[0].cfg.DataDir + "/" + datadir.AdminFile)
		if err != nil {
			return false, err.Error()
		}
		roots, err := pki.ParseCerts(cc.RootsPEM)
		return err == nil && len(roots) == 1 && pki.Digest(roots[0]) == digest, "old roots"
	})
	if _, err := c.control(c.managers[0]).ListNodes(callCtx(t), &pb.ListNodesRequest{}); err != nil {
		t.Fatalf("admin after the rotation: %v", err)
	}
	task2 := c.createTask(c.workers[1].a.ID(), "sleep 120")
	c.waitTaskState(task2, pb.TaskState_TASK_STATE_RUNNING, 20*time.Second)
	// The old token pins the old root: refused before anything is sent.
	_, _, err = manager.CheckToken(callCtx(t), c.managers[0].cfg.APIAddr(), oldToken)
	if err == nil || !strings.Contains(err.Error(), "CA digest mismatch") {
		t.Fatalf("join with the token from before the rotation: %v", err)
	}
	c.addWorkers(1) // with the current token
}

// TestGossipKeyRotation: nodes follow a gossip key rotation; a member with
// the new key joins, one with a retired key does not, and the worker stays
// a member throughout.
func TestGossipKeyRotation(t *testing.T) {
	c := newCluster(t)
	c.addManagers(1)
	c.addWorkers(1)
	m := c.managers[0]
	admin := c.control(m)
	keyNow := func() [][]byte {
		var keys [][]byte
		m.m.Store().View(func(tx *raftstore.Tx) { keys = tx.Cluster().GetGossipKeys() })
		return keys
	}
	first := keyNow()[0]
	rotate := func() []byte {
		if _, err := admin.RotateGossipKey(callCtx(t), &pb.RotateGossipKeyRequest{}); err != nil {
			t.Fatal(err)
		}
		key := keyNow()[0]
		for _, dir := range []string{m.cfg.DataDir, c.workers[0].cfg.DataDir} {
			c.eventually(20*time.Second, "every node to use the new gossip key", func() (bool, string) {
				id, err := datadir.Load(dir)
				return err == nil && len(id.GossipKeys) > 0 && bytes.Equal(id.GossipKeys[0], key), dir
			})
		}
		return key
	}
	tryJoin := func(host int, key []byte) bool {
		g, err := gossip.New(gossip.Config{
			Meta:      gossip.Meta{NodeID: fmt.Sprintf("probe-%d", host), Role: gossip.RoleWorker, API: c.ip(host) + ":1"},
			BindIP:    c.ip(host),
			ClusterID: m.m.ClusterID(),
			Keys:      [][]byte{key},
			Fast:      true,
			Logger:    slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatal(err)
		}
		defer g.Shutdown()
		gaddr, _ := manager.GossipAddrOf(m.cfg.APIAddr())
		n, err := g.Join([]string{gaddr})
		return err == nil && n > 0
	}
	second := rotate()
	if !tryJoin(41, second) {
		t.Fatal("a member with the new key could not join")
	}
	rotate()
	if tryJoin(43, first) {
		t.Fatal("a member with a retired key joined")
	}
	if got := c.nodeState(m, c.workers[0].a.ID()); got != pb.NodeState_NODE_STATE_READY {
		t.Fatalf("worker is %s after the rotations", got)
	}
	// The worker is still a gossip member of the manager's.
	c.eventually(20*time.Second, "the worker alive in gossip", func() (bool, string) {
		for _, mem := range m.m.Gossip().Members() {
			if mem.NodeID == c.workers[0].a.ID() {
				return true, ""
			}
		}
		return false, fmt.Sprint(m.m.Gossip().Members())
	})
}

// TestForwardedCallerOnlyFromCurrentManagers: a follower names the caller
// it forwards for in a header, and the leader believes it only from a
// manager that still is one. A demoted or removed manager's certificate,
// still within its lifetime, cannot pass itself off as an admin that way.
func TestForwardedCallerOnlyFromCurrentManagers(t *testing.T) {
	c := newCluster(t)
	c.addManagers(4)
	admin := c.control(c.managers[0])
	// forgeAdmin calls the control API with m's certificate, naming an
	// admin as the caller it forwards for.
	forgeAdmin := func(m *mgr) func() error {
		conn := dial(t, c.managers[0].cfg.APIAddr(), nodeCreds(t, m.cfg.DataDir), pki.RoleManager)
		return func() error {
			ctx := metadata.AppendToOutgoingContext(callCtx(t), "shoal-caller", "admin/intruder")
			_, err := pb.NewControlClient(conn).ListNodes(ctx, &pb.ListNodesRequest{})
			return err
		}
	}
	demoted, removed := c.managers[3], c.managers[2]
	fromDemoted, fromRemoved := forgeAdmin(demoted), forgeAdmin(removed)
	for _, call := range []func() error{fromDemoted, fromRemoved} {
		if err := call(); err != nil {
			t.Fatalf("a current manager forwarding for an admin: %v", err)
		}
	}

	// Demoted: the certificate now counts as a worker's.
	{
		id := demoted.m.ID()
		var spec *pb.NodeSpec
		for _, n := range listNodes(t, admin) {
			if n.GetId() == id {
				spec = proto.Clone(n.GetSpec()).(*pb.NodeSpec)
			}
		}
		spec.DesiredRole = pb.NodeRole_NODE_ROLE_WORKER
		if _, err := admin.UpdateNode(callCtx(t), &pb.UpdateNodeRequest{Ref: id, Spec: spec}); err != nil {
			t.Fatalf("demote %s: %v", id, err)
		}
		c.eventually(20*time.Second, "the demotion reaches the manager called", func() (bool, string) {
			err := fromDemoted()
			return status.Code(err) == codes.PermissionDenied, fmt.Sprintf("forged call: %v", err)
		})
		if err := fromDemoted(); !strings.Contains(fmt.Sprint(err), "may not use the control API") {
			t.Fatalf("a demoted manager forwarding for an admin: %v, want the control API refused", err)
		}
	}
	// Removed: the certificate is revoked.
	{
		id := removed.m.ID()
		c.stopManager(removed)
		if _, err := admin.RemoveNode(callCtx(t), &pb.RemoveNodeRequest{Ref: id, Force: true}); err != nil {
			t.Fatalf("remove %s: %v", id, err)
		}
		c.eventually(20*time.Second, "the removal reaches the manager called", func() (bool, string) {
			err := fromRemoved()
			return status.Code(err) == codes.PermissionDenied, fmt.Sprintf("forged call: %v", err)
		})
		if err := fromRemoved(); !strings.Contains(fmt.Sprint(err), "removed") {
			t.Fatalf("a removed manager forwarding for an admin: %v, want its certificate revoked", err)
		}
	}
}

// TestWorkersRefuseRevokedManagers: the certificate a manager kept from
// before its demotion or removal opens nothing on a worker any more: not
// its tasks' logs, not a session (the worker's credentials refuse such a
// server), also after the worker restarts.
func TestWorkersRefuseRevokedManagers(t *testing.T) {
	c := newCluster(t)
	c.addManagers(4)
	c.addWorkers(1)
	w := c.workers[0]
	admin := c.control(c.managers[0])
	task := c.createTask(w.a.ID(), "echo task-output; sleep 60")
	c.waitTaskState(task, pb.TaskState_TASK_STATE_RUNNING, 20*time.Second)
	// readLogs reads the task's output on the worker, as m.
	readLogs := func(creds *rpc.Credentials) (string, error) {
		conn := dial(t, workerAddr(w), creds, pki.RoleWorker)
		stream, err := pb.NewTaskLogsClient(conn).Logs(callCtx(t), &pb.TaskLogsRequest{TaskId: task})
		if err != nil {
			return "", err
		}
		var out strings.Builder
		for {
			ch, err := stream.Recv()
			if err != nil {
				if err == io.EOF {
					return out.String(), nil
				}
				return out.String(), err
			}
			out.Write(ch.GetData())
		}
	}
	demoted, removed := c.managers[3], c.managers[2]
	// What the two managers keep of their manager certificates.
	kept := []*rpc.Credentials{nodeCreds(t, demoted.cfg.DataDir), nodeCreds(t, removed.cfg.DataDir)}
	c.eventually(20*time.Second, "a manager reads the task's logs", func() (bool, string) {
		out, err := readLogs(kept[1])
		return err == nil && strings.Contains(out, "task-output"), fmt.Sprintf("%q, %v", out, err)
	})
	revoked := []string{demoted.m.ID(), removed.m.ID()}

	var spec *pb.NodeSpec
	for _, n := range listNodes(t, admin) {
		if n.GetId() == revoked[0] {
			spec = proto.Clone(n.GetSpec()).(*pb.NodeSpec)
		}
	}
	spec.DesiredRole = pb.NodeRole_NODE_ROLE_WORKER
	if _, err := admin.UpdateNode(callCtx(t), &pb.UpdateNodeRequest{Ref: revoked[0], Spec: spec}); err != nil {
		t.Fatalf("demote: %v", err)
	}
	c.stopManager(removed)
	if _, err := admin.RemoveNode(callCtx(t), &pb.RemoveNodeRequest{Ref: revoked[1], Force: true}); err != nil {
		t.Fatalf("remove: %v", err)
	}
	c.eventually(20*time.Second, "the worker hears of both revocations", func() (bool, string) {
		id, err := datadir.Load(w.cfg.DataDir)
		if err != nil {
			return false, err.Error()
		}
		for _, r := range revoked {
			if !slices.Contains(id.Revoked, r) {
				return false, fmt.Sprintf("revoked on the worker: %v", id.Revoked)
			}
		}
		return true, ""
	})
	check := func(when string) {
		t.Helper()
		for _, creds := range kept {
			if out, err := readLogs(creds); err == nil || strings.Contains(out, "task-output") {
				t.Fatalf("%s: a revoked manager certificate read the task's logs: %q, %v", when, out, err)
			}
		}
		// The worker's own credentials, as it dials managers, refuse a
		// server presenting a revoked certificate.
		for _, creds := range kept {
			l, err := net.Listen("tcp", net.JoinHostPort(c.ip(60), "0"))
			if err != nil {
				t.Fatal(err)
			}
			srv := grpc.NewServer(rpc.ServerOptions(creds, nil, nil)...)
			go func() { _ = srv.Serve(l) }()
			conn := dial(t, l.Addr().String(), w.a.Credentials(), pki.RoleManager)
			stream, err := pb.NewDispatcherClient(conn).Session(callCtx(t), &pb.SessionRequest{NodeId: w.a.ID()})
			if err == nil {
				_, err = stream.Recv()
			}
			srv.Stop()
			if err == nil || !strings.Contains(err.Error(), "revoked") {
				t.Fatalf("%s: the worker opened a session with a revoked manager: %v", when, err)
			}
		}
	}
	check("running")
	w.a.Close()
	c.restartWorker(w)
	check("after a restart")
}
