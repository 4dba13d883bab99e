package mesh

import "testing"

func TestTableByNameAndAlias(t *testing.T) {
	tab := table{
		"1": {ServiceId: "1", ServiceName: "prod_api", Aliases: []string{"api", "backend"}},
		"2": {ServiceId: "2", ServiceName: "dev_api", Aliases: []string{"api"}},
		"3": {ServiceId: "3", ServiceName: "backend"},
		"4": {ServiceId: "4", ServiceName: "web", Aliases: []string{"Front"}},
	}
	for _, tc := range []struct {
		name, want string
	}{
		{"prod_api", "1"},
		{"PROD_API", "1"},
		// An alias two services have: the service whose name sorts first.
		{"api", "2"},
		// A service's own name wins over another's alias.
		{"backend", "3"},
		{"front", "4"},
		{"nosuch", ""},
	} {
		got := tab.byName(tc.name)
		if got.GetServiceId() != tc.want {
			t.Errorf("byName(%q) = %q, want %q", tc.name, got.GetServiceId(), tc.want)
		}
	}
	// Every order of the map gives the same answer.
	for range 20 {
		if got := tab.byName("api").GetServiceId(); got != "2" {
			t.Fatalf("byName(api) = %q, want 2 whatever the map order", got)
		}
	}
}
