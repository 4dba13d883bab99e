package supervise

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// rotatingWriter appends to a log file and, when the next write would take
// it past max bytes, renames it to <path>.1 (replacing the previous one) and
// starts a new file. At most about 2*max bytes stay on disk. Used by one
// goroutine of the supervisor.
type rotatingWriter struct {
	path string
	max  int64
	f    *os.File
	size int64
}

func openRotating(path string, max int64) (*rotatingWriter, error) {
	w := &rotatingWriter{path: path, max: max}
	if err := w.open(); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *rotatingWriter) open() error {
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("open log: %w", err)
	}
	w.f, w.size = f, fi.Size()
	return nil
}

func (w *rotatingWriter) Write(p []byte) (int, error) {
	if w.f == nil {
		return 0, errors.New("log file is closed")
	}
	if w.size > 0 && w.size+int64(len(p)) > w.max {
		if err := w.rotate(); err != nil {
			return 0, err
		}
	}
	n, err := w.f.Write(p)
	w.size += int64(n)
	return n, err
}

func (w *rotatingWriter) rotate() error {
	if err := w.f.Close(); err != nil {
		w.f = nil
		return fmt.Errorf("rotate log: %w", err)
	}
	w.f = nil
	if err := os.Rename(w.path, w.path+".1"); err != nil {
		return fmt.Errorf("rotate log: %w", err)
	}
	return w.open()
}

func (w *rotatingWriter) Close() error {
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

// logFiles opens the task's log files, oldest first; missing ones are
// skipped.
func logFiles(dir string) ([]*os.File, error) {
	var files []*os.File
	for _, name := range []string{LogFile + ".1", LogFile} {
		f, err := os.Open(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			closeAll(files)
			return nil, fmt.Errorf("open log: %w", err)
		}
		files = append(files, f)
	}
	return files, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// tailStart finds where the last n lines of the concatenated files begin:
// the index of the file and the offset in it. A final newline does not
// start another line.
func tailStart(files []*os.File, n int) (int, int64, error) {
	if n <= 0 || len(files) == 0 {
		return 0, 0, nil
	}
	const chunk = 32 << 10
	buf := make([]byte, chunk)
	seen := 0
	first := true
	for i := len(files) - 1; i >= 0; i-- {
		fi, err := files[i].Stat()
		if err != nil {
			return 0, 0, fmt.Errorf("read log: %w", err)
		}
		end := fi.Size()
		for end > 0 {
			start := max(end-chunk, 0)
			b := buf[:end-start]
			if _, err := files[i].ReadAt(b, start); err != nil && err != io.EOF {
				return 0, 0, fmt.Errorf("read log: %w", err)
			}
			for j := len(b) - 1; j >= 0; j-- {
				if b[j] != '\n' {
					first = false
					continue
				}
				if first { // the newline that ends the last line
					first = false
					continue
				}
				seen++
				if seen == n {
					return i, start + int64(j) + 1, nil
				}
			}
			end = start
		}
	}
	return 0, 0, nil
}

// multiFileReader reads files one after the other, from an offset in the
// first, and closes them all.
type multiFileReader struct {
	r     io.Reader
	files []*os.File
}

func (m *multiFileReader) Read(p []byte) (int, error) { return m.r.Read(p) }
func (m *multiFileReader) Close() error {
	closeAll(m.files)
	return nil
}

// readLogs returns the task's output so far, its last tail lines when
// tail > 0.
func ReadLogs(dir string, tail int) (io.ReadCloser, error) {
	files, err := logFiles(dir)
	if err != nil {
		return nil, err
	}
	idx, off, err := tailStart(files, tail)
	if err != nil {
		closeAll(files)
		return nil, err
	}
	var readers []io.Reader
	for i := idx; i < len(files); i++ {
		start := int64(0)
		if i == idx {
			start = off
		}
		// Read up to the size now: a following reader starts where this
		// one ends, whatever is written meanwhile.
		fi, err := files[i].Stat()
		if err != nil {
			closeAll(files)
			return nil, fmt.Errorf("read log: %w", err)
		}
		readers = append(readers, io.NewSectionReader(files[i], start, max(fi.Size()-start, 0)))
	}
	return &multiFileReader{r: io.MultiReader(readers...), files: files}, nil
}

// followLogs streams the task's output: the last tail lines (all when 0),
// then whatever it writes, across rotations, until the task has exited and
// everything is read, ctx ends, the task is removed, or the reader is
// closed.
func FollowLogs(ctx context.Context, dir string, tail int, poll time.Duration) (io.ReadCloser, error) {
	files, err := logFiles(dir)
	if err != nil {
		return nil, err
	}
	idx, off, err := tailStart(files, tail)
	if err != nil {
		closeAll(files)
		return nil, err
	}
	pr, pw := io.Pipe()
	// Ending ctx unblocks a write the reader is not reading.
	stop := context.AfterFunc(ctx, func() { pw.Close() })
	go func() {
		defer stop()
		err := follow(ctx, dir, files, idx, off, pw, poll)
		pw.CloseWithError(err)
	}()
	return pr, nil
}

func follow(ctx context.Context, dir string, files []*os.File, idx int, off int64, w io.Writer, poll time.Duration) error {
	defer func() { closeAll(files) }()
	// Everything before the current file, from the tail start.
	for i := idx; i < len(files)-1; i++ {
		start := int64(0)
		if i == idx {
			start = off
		}
		if _, err := io.Copy(w, io.NewSectionReader(files[i], start, 1<<62)); err != nil {
			return nil // reader gone
		}
	}
	var cur *os.File
	if len(files) > 0 {
		cur = files[len(files)-1]
		start := int64(0)
		if idx == len(files)-1 {
			start = off
		}
		if _, err := cur.Seek(start, io.SeekStart); err != nil {
			return fmt.Errorf("read log: %w", err)
		}
		// If only task.log.1 exists, the current file is the rotated one;
		// the rotation check below moves on to task.log once it exists.
	}
	path := filepath.Join(dir, LogFile)
	ticker := time.NewTicker(poll)
	defer ticker.Stop()
	for {
		// Look at the exit before draining: once the exit is recorded the
		// supervisor has closed the log, so one more drain reads it all.
		exited := FileExists(filepath.Join(dir, ExitFile))
		for {
			if cur != nil {
				if _, err := io.Copy(w, cur); err != nil {
					return nil // reader gone
				}
			}
			// Rotated (or created)? Finish the old file, then switch.
			fi, err := os.Stat(path)
			if err != nil {
				break
			}
			if cur != nil {
				cfi, err := cur.Stat()
				if err == nil && os.SameFile(fi, cfi) {
					break
				}
			}
			next, err := os.Open(path)
			if err != nil {
				break
			}
			files = append(files, next)
			cur = next
		}
		if exited {
			return nil
		}
		if !FileExists(filepath.Join(dir, SpecFile)) {
			return nil // removed
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

// lastLines returns the last n lines of a small file, for error messages.
func LastLines(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	data = bytes.TrimRight(data, "\n")
	for i, cnt := len(data)-1, 0; i >= 0; i-- {
		if data[i] == '\n' {
			cnt++
			if cnt == n {
				return string(data[i+1:])
			}
		}
	}
	return string(data)
}
