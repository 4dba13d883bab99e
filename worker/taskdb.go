package worker

import (
	"fmt"
	"path/filepath"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
)

var (
	bucketTasks = []byte("tasks")
	bucketMeta  = []byte("meta")
	keyManagers = []byte("managers")
)

// taskDB is the agent's local record of its assigned tasks and their last
// observed status, so a restarted agent knows what it was running.
type taskDB struct{ db *bolt.DB }

func openTaskDB(dir string) (*taskDB, error) {
	path := filepath.Join(dir, "tasks.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w (is another agent using this data dir?)", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketTasks, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("init %s: %w", path, err)
	}
	return &taskDB{db: db}, nil
}

func (d *taskDB) close() error { return d.db.Close() }

// put stores a task with its status.
func (d *taskDB) put(t *pb.Task) error {
	data, err := proto.Marshal(t)
	if err != nil {
		return fmt.Errorf("encode task %s: %w", t.GetId(), err)
	}
	return d.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTasks).Put([]byte(t.GetId()), data)
	})
}

func (d *taskDB) delete(id string) error {
	return d.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTasks).Delete([]byte(id))
	})
}

// all returns every stored task.
func (d *taskDB) all() ([]*pb.Task, error) {
	var out []*pb.Task
	err := d.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTasks).ForEach(func(k, v []byte) error {
			t := &pb.Task{}
			if err := proto.Unmarshal(v, t); err != nil {
				return fmt.Errorf("decode task %s: %w", k, err)
			}
			out = append(out, t)
			return nil
		})
	})
	return out, err
}

// saveManagers remembers the managers of the last session.
func (d *taskDB) saveManagers(ms []*pb.ManagerAddr) error {
	data, err := proto.Marshal(&pb.SessionMessage{Managers: ms})
	if err != nil {
		return err
	}
	return d.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyManagers, data) })
}

func (d *taskDB) managers() []*pb.ManagerAddr {
	var msg pb.SessionMessage
	_ = d.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyManagers); v != nil {
			return proto.Unmarshal(v, &msg)
		}
		return nil
	})
	return msg.GetManagers()
}
