package bench

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sourcegraph/conc"
)

// processCPU is this process's user plus system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// resetPeakRSS restarts VmHWM at the current RSS (Linux 4.0+).
func resetPeakRSS() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// peakRSS reads VmHWM from /proc/self/status, in bytes; 0 when unknown.
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// heapWatch samples the Go heap in use every 50ms and keeps the peak.
type heapWatch struct {
	stopOnce sync.Once
	quit     chan struct{}
	wg       conc.WaitGroup
	peak     atomic.Uint64
}

func startHeapWatch() *heapWatch {
	h := &heapWatch{quit: make(chan struct{})}
	h.wg.Go(func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if v := ms.HeapInuse; v > h.peak.Load() {
				h.peak.Store(v)
			}
			select {
			case <-h.quit:
				return
			case <-t.C:
			}
		}
	})
	return h
}

func (h *heapWatch) stop() uint64 {
	h.stopOnce.Do(func() {
		close(h.quit)
		h.wg.Wait()
	})
	return h.peak.Load()
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// postgresCPU is the CPU time of the server whose data directory is dataDir:
// the postmaster, its children alive now, and its children that have exited.
// It reads /proc, so it works only for a server on this machine.
func postgresCPU(dataDir string) (time.Duration, error) {
	if dataDir == "" {
		return 0, errors.New("no data directory")
	}
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pm, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return 0, fmt.Errorf("postmaster.pid: %w", err)
	}
	f, err := procStat(pm)
	if err != nil {
		return 0, err
	}
	// utime, stime, cutime, cstime: fields 14 to 17, here 11 to 14.
	ticks := f[11] + f[12] + f[13] + f[14]
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == pm {
			continue
		}
		if c, err := procStat(pid); err == nil && c[1] == int64(pm) {
			ticks += c[11] + c[12]
		}
	}
	const clkTck = 100 // USER_HZ on every Linux this runs on
	return time.Duration(ticks) * time.Second / clkTck, nil
}

// procStat returns the numeric fields of /proc/pid/stat after the command
// name: index 0 is field 3 (state, as 0), index 1 the parent's pid.
func procStat(pid int) ([]int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, errors.New("malformed stat")
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 15 {
		return nil, errors.New("short stat")
	}
	out := make([]int64, 15)
	for k := 1; k < 15; k++ {
		out[k], _ = strconv.ParseInt(fields[k], 10, 64)
	}
	return out, nil
}
