package gossip

import (
	"encoding/json"
	"net"
	"testing"

	"github.com/hashicorp/memberlist"
)

// FuzzMemberMeta feeds arbitrary node metadata (what any peer on the
// gossip network announces) to the decoder: no panic, and a member only
// with a node ID, at the peer's address, alive unless leaving.
func FuzzMemberMeta(f *testing.F) {
	for _, m := range []Meta{{NodeID: "n1", Role: "manager", API: "10.0.0.1:4242"}, {NodeID: "n2", Role: "worker", Leaving: true}, {}} {
		data, err := json.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(`{"i":`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		node := &memberlist.Node{Name: "peer", Addr: net.IPv4(10, 0, 0, 9), Port: 4244, Meta: data}
		m, ok := toMember(node)
		if !ok {
			return
		}
		if m.NodeID == "" || m.Addr != "10.0.0.9:4244" || m.Alive == m.Leaving {
			t.Fatalf("toMember(%q) = %+v", data, m)
		}
	})
}
