package controlapi

// What secrets and configs share: both are named blobs, immutable once
// created, that services reference and tasks see as files. The helpers
// here are written once for both; secrets.go and configs.go say only what
// differs (sealing, size limits, targets).

import (
	"context"
	"log/slog"
	"regexp"
	"sort"
	"strings"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/shoal-cluster/shoal/raftstore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// maxBlobNameLen bounds a secret's or config's name (it is also the
// default file name a task sees).
const maxBlobNameLen = 64

// blobName is a secret's or config's name: letters, digits, '-', '_' and
// '.', starting with a letter or digit (Docker's rule; it is a safe file
// name).
var blobName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// StillUsedByTasks ends the message of a refusal to remove a secret or
// config that no service uses but tasks that still run do (those of a
// service just removed): a retry once they have stopped succeeds.
const StillUsedByTasks = "retry once they have stopped"

// blobKind describes one kind of named blob (secret or config) to the
// shared helpers.
type blobKind[T raftstore.Object] struct {
	// noun is "secret" or "config", as messages say it.
	noun string
	// table is the kind's table in a transaction.
	table func(tx *raftstore.Tx) raftstore.Table[T]
	// uses reports whether a container spec references the object.
	uses func(c *pb.ContainerSpec, id string) bool
	// rmFlag is the `service update` flag that drops a reference.
	rmFlag string
	// nameOf is an object's name.
	nameOf func(T) string
	// listed is a copy of an object fit for a listing.
	listed func(T) T
}

// validateBlob checks a new secret's or config's name, labels and size
// (limitText says the limit in words, hint what to store instead).
func validateBlob(noun string, ann *pb.Annotations, size, limit int, limitText, hint string) error {
	name := ann.GetName()
	if name == "" {
		return status.Errorf(codes.InvalidArgument, "a %s needs a name", noun)
	}
	if len(name) > maxBlobNameLen || !blobName.MatchString(name) {
		return status.Errorf(codes.InvalidArgument, "invalid %s name %q: use 1-%d letters, digits, '-', '_' and '.', starting with a letter or digit", noun, name, maxBlobNameLen)
	}
	switch {
	case size == 0:
		return status.Errorf(codes.InvalidArgument, "%s %q is empty; give it a value (a file, or - for standard input)", noun, name)
	case size > limit:
		return status.Errorf(codes.InvalidArgument, "%s %q is %d bytes, more than the limit of %d bytes (%s); %s", noun, name, size, limit, limitText, hint)
	}
	for k := range ann.GetLabels() {
		if k == "" || strings.ContainsAny(k, " =\t\n") {
			return status.Errorf(codes.InvalidArgument, "invalid label key %q: no spaces or '='", k)
		}
	}
	return nil
}

// createBlob stores a new object made by build (given the transaction's
// new ID) under a name no other object of its kind has, and returns it as
// stored. A retried create that already committed finds what it made.
func createBlob[T raftstore.Object](ctx context.Context, store raftstore.StateStore, k blobKind[T], name string, build func(id string) (T, error)) (T, error) {
	var zero T
	_, err := store.Update(ctx, func(tx *raftstore.Tx) error {
		if other := k.table(tx).Find(raftstore.IndexName, name); len(other) > 0 {
			return status.Errorf(codes.AlreadyExists, "a %s named %q already exists (%s); %ss cannot change: create one under another name and move services to it with `shoal service update %s %s --%s-add NEW`",
				k.noun, name, other[0].GetId(), k.noun, k.rmFlag, name, k.noun)
		}
		o, err := build(tx.NewID())
		if err != nil {
			return err
		}
		return k.table(tx).Create(o)
	})
	if err != nil {
		return zero, err
	}
	var out T
	found := false
	store.View(func(tx *raftstore.Tx) {
		if got := k.table(tx).Find(raftstore.IndexName, name); len(got) == 1 {
			out, found = got[0], true
		}
	})
	if !found {
		return zero, status.Errorf(codes.NotFound, "%s %q was removed meanwhile", k.noun, name)
	}
	return out, nil
}

// getBlob resolves ref and lists the services that use the object.
func getBlob[T raftstore.Object](ctx context.Context, store raftstore.StateStore, k blobKind[T], ref string) (T, []string, error) {
	var (
		o     T
		users []string
		err   error
	)
	verr := store.ViewConsistent(ctx, func(tx *raftstore.Tx) {
		if o, err = resolveRef(k.table(tx), k.noun, ref); err == nil {
			users = servicesUsing(tx, k, o.GetId())
		}
	})
	if verr != nil {
		return o, nil, verr
	}
	return o, users, err
}

// listBlobs returns every object of a kind as listings show it, sorted by
// name.
func listBlobs[T raftstore.Object](ctx context.Context, store raftstore.StateStore, k blobKind[T]) ([]T, error) {
	var all []T
	if err := store.ViewConsistent(ctx, func(tx *raftstore.Tx) { all = k.table(tx).List() }); err != nil {
		return nil, err
	}
	sort.Slice(all, func(i, j int) bool { return k.nameOf(all[i]) < k.nameOf(all[j]) })
	for i, o := range all {
		all[i] = k.listed(o)
	}
	return all, nil
}

// removeBlob deletes an object no service or live task uses.
func removeBlob[T raftstore.Object](ctx context.Context, store raftstore.StateStore, log *slog.Logger, k blobKind[T], ref string) error {
	var name, id string
	_, err := store.Update(ctx, func(tx *raftstore.Tx) error {
		o, err := resolveRef(k.table(tx), k.noun, ref)
		if err != nil {
			return err
		}
		name, id = k.nameOf(o), o.GetId()
		if users := servicesUsing(tx, k, id); len(users) > 0 {
			return status.Errorf(codes.FailedPrecondition, "%s %q is in use by %s %s; remove it from them first (`shoal service update %s %s SERVICE`)",
				k.noun, name, plural(len(users), "service", "services"), strings.Join(users, ", "), k.rmFlag, name)
		}
		if n := liveTasksUsing(tx, k, id); n > 0 {
			return status.Errorf(codes.FailedPrecondition, "%s %q is still used by %d running %s; "+StillUsedByTasks, k.noun, name, n, plural(n, "task", "tasks"))
		}
		return k.table(tx).Delete(id)
	})
	if err == nil && id != "" {
		log.Info(k.noun+" removed", k.noun, name, "id", id)
	}
	return err
}

// servicesUsing lists, sorted, the names of the services whose spec uses
// an object.
func servicesUsing[T raftstore.Object](tx *raftstore.Tx, k blobKind[T], id string) []string {
	var out []string
	for _, svc := range tx.Services().List() {
		if k.uses(svc.GetSpec().GetTask().GetContainer(), id) {
			out = append(out, svc.GetSpec().GetAnnotations().GetName())
		}
	}
	sort.Strings(out)
	return out
}

// liveTasksUsing counts tasks that should run and use an object.
func liveTasksUsing[T raftstore.Object](tx *raftstore.Tx, k blobKind[T], id string) int {
	n := 0
	for _, t := range tx.Tasks().List() {
		if t.GetDesiredState() > pb.TaskState_TASK_STATE_RUNNING || t.GetStatus().GetState() >= pb.TaskState_TASK_STATE_COMPLETE {
			continue
		}
		if k.uses(t.GetSpec().GetContainer(), id) {
			n++
		}
	}
	return n
}

// resolveBlobRef finds the object a service's reference names: by name,
// or by ID when no name is given (a spec read back from the store).
func resolveBlobRef[T raftstore.Object](tx *raftstore.Tx, k blobKind[T], name, id string) (T, error) {
	var zero T
	switch {
	case name != "":
		found := k.table(tx).Find(raftstore.IndexName, name)
		if len(found) == 0 {
			return zero, status.Errorf(codes.NotFound, "no %s %q; create it first with `shoal %s create %s FILE` (list them with `shoal %s ls`)", k.noun, name, k.noun, name, k.noun)
		}
		return found[0], nil
	case id != "":
		o, ok := k.table(tx).Get(id)
		if !ok {
			return zero, status.Errorf(codes.NotFound, "%s %s no longer exists; create it again and update the service", k.noun, id)
		}
		return o, nil
	}
	return zero, status.Errorf(codes.InvalidArgument, "a %s reference needs the %s's name", k.noun, k.noun)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// updateBlob changes an object's labels and nothing else: the name must
// stay and same must report that the value sent (if any) is the stored
// one. An update that changes nothing writes nothing. relabel returns a
// copy of the object with the labels given.
func updateBlob[T raftstore.Object](ctx context.Context, store raftstore.StateStore, k blobKind[T], ref string, version uint64, ann *pb.Annotations,
	same func(T) (bool, error), relabel func(T, map[string]string) T) (T, error) {
	var zero T
	if err := validateLabels(ann.GetLabels()); err != nil {
		return zero, err
	}
	var id string
	_, err := store.Update(ctx, func(tx *raftstore.Tx) error {
		o, err := resolveRef(k.table(tx), k.noun, ref)
		if err != nil {
			return err
		}
		id = o.GetId()
		name := k.nameOf(o)
		if version != 0 && version != o.GetMeta().GetVersion() {
			return status.Errorf(codes.Aborted, "%s %s was changed by someone else since version %d (now %d); read it again and retry", k.noun, name, version, o.GetMeta().GetVersion())
		}
		if ann.GetName() != "" && ann.GetName() != name {
			return status.Errorf(codes.InvalidArgument, "a %s's name cannot change (%s to %s): create a new %s", k.noun, name, ann.GetName(), k.noun)
		}
		ok, err := same(o)
		if err != nil {
			return err
		}
		if !ok {
			return status.Errorf(codes.InvalidArgument, "%s %s cannot change its value: only its labels can be updated; create a new %s under another name and move services to it with `shoal service update %s %s --%s-add NEW`",
				k.noun, name, k.noun, k.rmFlag, name, k.noun)
		}
		next := relabel(o, ann.GetLabels())
		if proto.Equal(next, o) {
			return nil
		}
		return k.table(tx).Update(next)
	})
	if err != nil {
		return zero, err
	}
	var out T
	found := false
	store.View(func(tx *raftstore.Tx) { out, found = k.table(tx).Get(id) })
	if !found {
		return zero, status.Errorf(codes.NotFound, "%s %s was removed meanwhile", k.noun, ref)
	}
	return out, nil
}

// validateLabels checks label keys: no spaces or '='.
func validateLabels(labels map[string]string) error {
	for k := range labels {
		if k == "" || strings.ContainsAny(k, " =\t\n") {
			return status.Errorf(codes.InvalidArgument, "invalid label key %q: no spaces or '='", k)
		}
	}
	return nil
}
