package bookierpc

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	journalv1 "github.com/quiremq/quire/internal/proto/journal/v1"
	"github.com/quiremq/quire/internal/scripttest"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/journal/bookie"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of testdata/*.txt scripts")

// TestScripts runs the gRPC contract scenarios of testdata/*.txt against a
// real bookie (on an in-memory file system) through a real gRPC connection
// (bufconn). Each case is a command, a "----" line and its expected output,
// ended by a blank line; lines starting with # are comments. -rewrite
// replaces the expected output with the actual one.
//
// Commands (ledger=L entry=E are numbers; data defaults to "L/E"):
//
//	add ledger= entry= [lac=] [data=] [size=N] [recovery] [badcrc]
//	                               one add on the open stream; its status
//	adds ledger= from= to= [recovery] [size=N]
//	                               pipelined adds of entries from..to on the
//	                               open stream (data "L/E", padded with x to
//	                               N bytes); the count of each status
//	read ledger= entry= [fence]    data=... or the status
//	readrange ledger= from= to= [stride=]
//	                               ReadEntries: the entries and their data
//	                               (summarized for more than 8: count, first,
//	                               last, whether each holds "L/E"), then its
//	                               outcome (at which entry, for NO_SUCH_ENTRY)
//	lac ledger= [fence]            lac=N or the status
//	writelac ledger= lac=          the status
//	fence ledger=                  lac=N or the status
//	delete ledger=                 the status
//	restart                        detach, close the bookie, reopen, attach
//	detach / attach                stop / resume serving the bookie
//
// A gRPC error (no answer from the bookie) prints as "grpc CODE".
func TestScripts(t *testing.T) {
	for _, file := range scripttest.Files(t, "testdata/*.txt") {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txt"), func(t *testing.T) { runScript(t, file) })
	}
}

// rig is a bookie served over a real gRPC connection.
type rig struct {
	t      testing.TB
	mem    *vfs.MemFS
	opts   bookie.Options
	b      *bookie.Bookie
	srv    *Server
	gs     *grpc.Server
	client *Client
	cc     *grpc.ClientConn
}

func testBookieOptions(fs vfs.FS) bookie.Options {
	return bookie.Options{
		FS:                 fs,
		Dir:                "/data",
		BookieID:           "bookie-1",
		Cookies:            &bookie.MemCookieStore{},
		MaxGroupWait:       200 * time.Microsecond,
		JournalFileSize:    256 << 10,
		CheckpointInterval: time.Hour,
		MaxEntrySize:       16 << 10,
	}
}

func newRig(t testing.TB, so ServerOptions) *rig {
	t.Helper()
	r := &rig{t: t, mem: vfs.NewCrashableMem()}
	r.opts = testBookieOptions(r.mem)
	b, err := bookie.Open(r.opts)
	if err != nil {
		t.Fatal(err)
	}
	r.b = b
	r.srv = NewServer(so)
	r.srv.Attach(b)
	lis := bufconn.Listen(1 << 20)
	r.gs = grpc.NewServer()
	journalv1.RegisterBookieServer(r.gs, r.srv)
	go r.gs.Serve(lis)
	r.cc, err = grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	r.client = NewClient(r.cc)
	t.Cleanup(r.close)
	return r
}

func (r *rig) close() {
	r.cc.Close()
	r.gs.Stop()
	r.srv.Detach()
	if r.b != nil {
		r.b.Close()
		r.b = nil
	}
}

type addKey struct{ ledger, entry uint64 }

// adder keeps one AddEntries stream open and collects results.
type adder struct {
	s       *AddStream
	mu      sync.Mutex
	results map[addKey]chan error
}

func (r *rig) openAdder() (*adder, error) {
	a := &adder{results: map[addKey]chan error{}}
	s, err := r.client.AddStream(context.Background(), func(res AddResult) {
		a.mu.Lock()
		ch := a.results[addKey{res.Ledger, res.Entry}]
		a.mu.Unlock()
		ch <- res.Err
	})
	if err != nil {
		return nil, err
	}
	a.s = s
	return a, nil
}

func (a *adder) send(add Add, badCRC bool) (chan error, error) {
	ch := make(chan error, 1)
	a.mu.Lock()
	a.results[addKey{add.Ledger, add.Entry}] = ch
	a.mu.Unlock()
	if badCRC {
		add.CRC32C = CRC32C(add.Payload) ^ 1 // a crc32c that does not match
	}
	return ch, a.s.Add(add)
}

// statusName names a result: the status without its prefix, or "grpc CODE".
func statusName(err error) string {
	if st := StatusOf(err); st != journalv1.Status_STATUS_UNSPECIFIED {
		return strings.TrimPrefix(st.String(), "STATUS_")
	}
	if s, ok := status.FromError(err); ok || s.Code() != codes.Unknown {
		return "grpc " + s.Code().String()
	}
	return "error " + err.Error()
}

func runScript(t *testing.T, file string) {
	r := newRig(t, ServerOptions{StreamInflightBytes: 64 << 10})
	var ad *adder
	defer func() {
		if ad != nil {
			ad.s.Abort()
		}
	}()
	scripttest.Run(t, file, *rewrite, func(cmd string) []string { return r.run(cmd, &ad) })
}

func (r *rig) run(cmd string, ad **adder) []string {
	t := r.t
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fields := strings.Fields(cmd)
	args := map[string]string{}
	for _, f := range fields[1:] {
		k, v, _ := strings.Cut(f, "=")
		args[k] = v
	}
	num := func(k string) uint64 {
		v, err := strconv.ParseUint(args[k], 10, 64)
		if err != nil {
			t.Fatalf("%s: bad %s=%q", cmd, k, args[k])
		}
		return v
	}
	has := func(k string) bool { _, ok := args[k]; return ok }
	stream := func() *adder {
		if *ad != nil {
			select {
			case <-(*ad).s.Done(): // ended (the bookie was detached): open a new one
				*ad = nil
			default:
			}
		}
		if *ad == nil {
			a, err := r.openAdder()
			if err != nil {
				t.Fatalf("%s: open stream: %v", cmd, err)
			}
			*ad = a
		}
		return *ad
	}
	switch fields[0] {
	case "add":
		l, e := num("ledger"), num("entry")
		lac := int64(-1)
		if v, ok := args["lac"]; ok {
			lac, _ = strconv.ParseInt(v, 10, 64)
		}
		data := []byte(fmt.Sprintf("%d/%d", l, e))
		if v, ok := args["data"]; ok {
			data = []byte(v)
		}
		if has("size") {
			data = make([]byte, num("size"))
		}
		ch, err := stream().send(Add{Ledger: l, Entry: e, LAC: lac, Payload: data, Recovery: has("recovery")}, has("badcrc"))
		if err != nil {
			// A stream the server ends at once (no bookie attached) may
			// fail the add as Add returns or through its answer: either
			// way the add gets the stream's status.
			return []string{statusName(err)}
		}
		res := <-ch
		if res != nil && StatusOf(res) == journalv1.Status_STATUS_UNSPECIFIED {
			// The stream failed (not a bookie's answer): the next add
			// opens a new one once this one's end is visible.
			select {
			case <-(*ad).s.Done():
			case <-time.After(5 * time.Second):
			}
		}
		return []string{statusName(res)}
	case "adds":
		l := num("ledger")
		var chs []chan error
		for e := num("from"); e <= num("to"); e++ {
			data := []byte(fmt.Sprintf("%d/%d", l, e))
			if has("size") {
				data = append(data, bytes.Repeat([]byte("x"), int(num("size"))-len(data))...)
			}
			ch, err := stream().send(Add{Ledger: l, Entry: e, LAC: -1, Payload: data, Recovery: has("recovery")}, false)
			if err != nil {
				return []string{"send: " + statusName(err)}
			}
			chs = append(chs, ch)
		}
		count := map[string]int{}
		for _, ch := range chs {
			count[statusName(<-ch)]++
		}
		var lines []string
		for k, n := range count {
			lines = append(lines, fmt.Sprintf("%s: %d", k, n))
		}
		slices.Sort(lines)
		return lines
	case "read":
		data, err := r.client.ReadEntry(ctx, num("ledger"), num("entry"), has("fence"))
		if err != nil {
			return []string{statusName(err)}
		}
		return []string{"data=" + string(data)}
	case "readrange":
		return r.readRange(ctx, num("ledger"), num("from"), num("to"), args["stride"])
	case "lac":
		lac, err := r.client.ReadLAC(ctx, num("ledger"), has("fence"))
		if err != nil {
			return []string{statusName(err)}
		}
		return []string{fmt.Sprintf("lac=%d", lac)}
	case "writelac":
		lac, _ := strconv.ParseInt(args["lac"], 10, 64)
		return []string{statusName(r.client.WriteLAC(ctx, num("ledger"), lac))}
	case "fence":
		lac, err := r.client.Fence(ctx, num("ledger"))
		if err != nil {
			return []string{statusName(err)}
		}
		return []string{fmt.Sprintf("lac=%d", lac)}
	case "delete":
		return []string{statusName(r.client.DeleteLedger(ctx, num("ledger")))}
	case "detach":
		r.srv.Detach()
		return r.endStream(ad)
	case "attach":
		r.srv.Attach(r.b)
		return []string{"ok"}
	case "restart":
		if err := r.b.Close(); err != nil {
			return []string{"close: " + err.Error()}
		}
		r.srv.Detach()
		out := r.endStream(ad)
		b, err := bookie.Open(r.opts)
		if err != nil {
			return []string{"open: " + err.Error()}
		}
		r.b = b
		r.srv.Attach(b)
		return out
	}
	t.Fatalf("unknown command %q", cmd)
	return nil
}

// endStream waits for the open stream (if any) to end, as the server
// ends it once the bookie is detached, and reports how. (Closing the
// sending side at once would race the server's end: a close that reaches
// it first ends the stream cleanly.)
func (r *rig) endStream(ad **adder) []string {
	if *ad == nil {
		return []string{"ok"}
	}
	select {
	case <-(*ad).s.Done():
	case <-time.After(5 * time.Second):
	}
	err := (*ad).s.Close()
	*ad = nil
	if err != nil {
		return []string{"stream: " + statusName(err)}
	}
	return []string{"stream: ok"}
}

// readRange runs ReadEntries and describes what it returned.
func (r *rig) readRange(ctx context.Context, l, from, to uint64, strideArg string) []string {
	stride := uint64(1)
	if strideArg != "" {
		stride, _ = strconv.ParseUint(strideArg, 10, 64)
	}
	var es []uint64
	var data []string
	err := r.client.ReadEntries(ctx, l, from, to, stride, func(e uint64, p []byte) error {
		es = append(es, e)
		data = append(data, string(p))
		return nil
	})
	var out []string
	if len(es) <= 8 {
		for i, e := range es {
			out = append(out, fmt.Sprintf("%d: %s", e, data[i]))
		}
	} else {
		ok := true
		for i, e := range es {
			ok = ok && strings.HasPrefix(data[i], fmt.Sprintf("%d/%d", l, e)) && (len(data[i]) == len(fmt.Sprintf("%d/%d", l, e)) || data[i][len(fmt.Sprintf("%d/%d", l, e))] == 'x')
		}
		out = append(out, fmt.Sprintf("%d entries %d..%d, each its own data: %v", len(es), es[0], es[len(es)-1], ok))
	}
	end := "end: " + statusName(err)
	if err == nil {
		end = "end: OK"
	}
	if StatusOf(err) == journalv1.Status_STATUS_NO_SUCH_ENTRY {
		at := from
		if len(es) > 0 {
			at = es[len(es)-1] + stride
		}
		end += fmt.Sprintf(" at entry %d", at)
	}
	return append(out, end)
}
