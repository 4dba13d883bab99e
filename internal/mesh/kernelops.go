package mesh

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// kernelOp is one step of a change to a mesh table. A change is a list
// of them, sent as one transaction: as an nft script (script) or as one
// netlink batch (netlink), which write the same table: `nft list`
// shows no difference.
type kernelOp struct {
	kind  opKind
	key   string      // the frontend ("ip:port"), for per-frontend steps
	front kernelFront // opBackends, opFrontAdd, opFrontDel
	n     int         // opRule: backends (0: no rule)
	elems []string    // opMasqAdd, opMasqDel: "frontend . backend . port"
}

type opKind int

const (
	opDeclare   opKind = iota // a frontend's map and chain (nft only)
	opUndeclare               // remove a frontend's chain and map
	opRule                    // replace a frontend's rule: numgen over n backends
	opBackends                // replace a frontend's backend map
	opFrontAdd                // the frontends element leading to its chain
	opFrontDel                // remove that element
	opMasqAdd                 // SNAT for remote backends
	opMasqDel
)

func (op kernelOp) script(b *strings.Builder, k *kernel) {
	t, n := "ip "+k.table, frontName(op.key)
	switch op.kind {
	case opDeclare:
		fmt.Fprintf(b, "add map %s be_%s { typeof numgen inc mod 1 : ip daddr . tcp dport; }\n", t, n)
		fmt.Fprintf(b, "add chain %s fe_%s\n", t, n)
	case opUndeclare:
		fmt.Fprintf(b, "flush chain %s fe_%s\ndelete chain %s fe_%s\ndelete map %s be_%s\n", t, n, t, n, t, n)
	case opRule:
		fmt.Fprintf(b, "flush chain %s fe_%s\n", t, n)
		if op.n > 0 {
			fmt.Fprintf(b, "add rule %s fe_%s meta l4proto tcp dnat ip to numgen inc mod %d map @be_%s\n", t, n, op.n, n)
		}
	case opBackends:
		fmt.Fprintf(b, "flush map %s be_%s\n", t, n)
		if len(op.front.backends) > 0 {
			elems := make([]string, len(op.front.backends))
			for i, be := range op.front.backends {
				host, port, _ := net.SplitHostPort(be)
				elems[i] = fmt.Sprintf("%d : %s . %s", i, host, port)
			}
			fmt.Fprintf(b, "add element %s be_%s { %s }\n", t, n, strings.Join(elems, ", "))
		}
	case opFrontAdd:
		fmt.Fprintf(b, "add element %s frontends { %s . %d : goto fe_%s }\n", t, op.front.ip, op.front.port, n)
	case opFrontDel:
		fmt.Fprintf(b, "delete element %s frontends { %s . %d }\n", t, op.front.ip, op.front.port)
	case opMasqAdd:
		fmt.Fprintf(b, "add element %s masq { %s }\n", t, strings.Join(op.elems, ", "))
	case opMasqDel:
		fmt.Fprintf(b, "delete element %s masq { %s }\n", t, strings.Join(op.elems, ", "))
	}
}

// netlink queues the op on nl's batch for the table; Flush sends it.
func (op kernelOp) netlink(nl *nftables.Conn, table string) error {
	t := &nftables.Table{Name: table, Family: nftables.TableFamilyIPv4}
	n := frontName(op.key)
	chain := &nftables.Chain{Table: t, Name: "fe_" + n}
	beMap := &nftables.Set{Table: t, Name: "be_" + n, IsMap: true}
	frontends := &nftables.Set{Table: t, Name: "frontends", IsMap: true}
	masq := &nftables.Set{Table: t, Name: "masq"}
	switch op.kind {
	case opDeclare:
		return errors.New("a frontend's map is declared through nft")
	case opUndeclare:
		nl.FlushChain(chain)
		nl.DelChain(chain)
		nl.DelSet(beMap)
	case opRule:
		nl.FlushChain(chain)
		if op.n > 0 {
			// meta l4proto tcp dnat ip to numgen inc mod N map @be_<n>
			nl.AddRule(&nftables.Rule{Table: t, Chain: chain, Exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
				&expr.Numgen{Register: 1, Type: unix.NFT_NG_INCREMENTAL, Modulus: uint32(op.n)},
				&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: beMap.Name},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 9},
			}})
		}
	case opBackends:
		nl.FlushSet(beMap)
		if len(op.front.backends) == 0 {
			return nil
		}
		elems := make([]nftables.SetElement, len(op.front.backends))
		for i, be := range op.front.backends {
			val, err := concatKey(be)
			if err != nil {
				return err
			}
			// numgen's value, in host byte order
			elems[i] = nftables.SetElement{Key: binary.NativeEndian.AppendUint32(nil, uint32(i)), Val: val}
		}
		return nl.SetAddElements(beMap, elems)
	case opFrontAdd, opFrontDel:
		key, err := concatKey(net.JoinHostPort(op.front.ip, strconv.Itoa(op.front.port)))
		if err != nil {
			return err
		}
		if op.kind == opFrontDel {
			return nl.SetDeleteElements(frontends, []nftables.SetElement{{Key: key}})
		}
		return nl.SetAddElements(frontends, []nftables.SetElement{{Key: key,
			VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: chain.Name}}})
	case opMasqAdd, opMasqDel:
		elems := make([]nftables.SetElement, len(op.elems))
		for i, e := range op.elems {
			f := strings.Split(e, " . ")
			if len(f) != 3 {
				return fmt.Errorf("masq element %q", e)
			}
			front := net.ParseIP(f[0]).To4()
			back, err := concatKey(net.JoinHostPort(f[1], f[2]))
			if front == nil || err != nil {
				return fmt.Errorf("masq element %q", e)
			}
			elems[i] = nftables.SetElement{Key: append(front, back...)}
		}
		if op.kind == opMasqDel {
			return nl.SetDeleteElements(masq, elems)
		}
		return nl.SetAddElements(masq, elems)
	}
	return nil
}

// concatKey is "ip:port" as nftables stores `ipv4_addr . inet_service`:
// the address, then the port in network order padded to 4 bytes.
func concatKey(hostPort string) ([]byte, error) {
	host, p, err := net.SplitHostPort(hostPort)
	if err != nil {
		return nil, err
	}
	ip := net.ParseIP(host).To4()
	port, err := strconv.ParseUint(p, 10, 16)
	if ip == nil || err != nil {
		return nil, fmt.Errorf("not an IPv4 address and port: %q", hostPort)
	}
	b := append([]byte(nil), ip...)
	return append(binary.BigEndian.AppendUint16(b, uint16(port)), 0, 0), nil
}
