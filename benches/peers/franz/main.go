// Command peers-franz runs one phase of the peers benchmark through franz-go
// (github.com/twmb/franz-go), in a process of its own, and reports it the way
// the Rust children of `peers run` do: one line on stdout,
//
//	PEERS_RESULT phase=<p> records=<n> bytes=<b> work_ns=<ns> call_ns=<ns> hwm_kib=<kib> cpu_ns=<ns> [conns=<n>]
//
// or `PEERS_ERROR <message>`. The parent (`peers`) starts it with the same
// arguments as its own children:
//
//	peers-franz run --client franz-go --phase produce|read|group --bootstrap H:P
//	    --topic T --partitions N --records N --size BYTES [--keyed]
//	peers-franz idle --client franz-go --bootstrap H:P --topics A,B --group G
//	    --partitions N --secs S
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// The producer settings every client of the benchmark shares (see
// src/workload.rs).
const (
	lingerMs   = 5
	batchBytes = 1024 * 1024
	// How long a reader may see no new record before it gives up.
	readStall = 60 * time.Second
	// How long an idle member may take to get its whole assignment.
	assignTimeout = 120 * time.Second
)

// args holds the flags of both modes.
type args struct {
	client     string
	phase      string
	bootstrap  string
	topic      string
	topics     string
	group      string
	partitions int
	records    int
	size       int
	keyed      bool
	secs       int
}

// report is what the result line carries; see the package comment.
type report struct {
	phase   string
	records int64
	bytes   int64
	workNs  int64
	callNs  int64
	cpuNs   int64
	conns   int // -1: not counted
}

func (r report) line() string {
	text := fmt.Sprintf("PEERS_RESULT phase=%s records=%d bytes=%d work_ns=%d call_ns=%d hwm_kib=%d cpu_ns=%d",
		r.phase, r.records, r.bytes, r.workNs, r.callNs, peakRSSKiB(), r.cpuNs)
	if r.conns >= 0 {
		text += fmt.Sprintf(" conns=%d", r.conns)
	}
	return text
}

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "run" && os.Args[1] != "idle") {
		fail(2, errors.New("usage: peers-franz run|idle [flags]"))
	}
	mode := os.Args[1]
	var a args
	fs := flag.NewFlagSet("peers-franz", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	fs.StringVar(&a.client, "client", "franz-go", "client (always franz-go)")
	fs.StringVar(&a.phase, "phase", "", "produce, read or group")
	fs.StringVar(&a.bootstrap, "bootstrap", os.Getenv("KAFKA_BOOTSTRAP"), "broker host:port")
	fs.StringVar(&a.topic, "topic", "", "topic")
	fs.StringVar(&a.topics, "topics", "", "topics of the idle member, comma-separated")
	fs.StringVar(&a.group, "group", "", "group of the idle member")
	fs.IntVar(&a.partitions, "partitions", 0, "partitions of the topic (idle: in all topics)")
	fs.IntVar(&a.records, "records", 0, "records")
	fs.IntVar(&a.size, "size", 0, "value size in bytes")
	fs.BoolVar(&a.keyed, "keyed", false, "give every record a key")
	fs.IntVar(&a.secs, "secs", 60, "idle window in seconds")
	if err := fs.Parse(os.Args[2:]); err != nil {
		fail(2, err)
	}
	if a.bootstrap == "" {
		fail(2, errors.New("--bootstrap or KAFKA_BOOTSTRAP is needed"))
	}

	var (
		r   report
		err error
	)
	if mode == "idle" {
		r, err = idle(a)
	} else {
		r, err = runPhase(a)
	}
	if err != nil {
		fail(1, err)
	}
	fmt.Println(r.line())
}

func fail(code int, err error) {
	fmt.Println("PEERS_ERROR " + strings.ReplaceAll(err.Error(), "\n", " "))
	os.Exit(code)
}

// payload is the same deterministic noise as workload::payload in Rust, so
// every client sends identical bytes.
func payload(size int) []byte {
	state := uint64(0x9E3779B97F4A7C15)
	out := make([]byte, 0, size)
	var word [8]byte
	for len(out) < size {
		state ^= state << 13
		state ^= state >> 7
		state ^= state << 17
		binary.LittleEndian.PutUint64(word[:], state)
		take := min(size-len(out), 8)
		out = append(out, word[:take]...)
	}
	return out
}

// cpuNs is this process's user plus system CPU time so far.
func cpuNs() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// peakRSSKiB is VmHWM from /proc/self/status, as the Rust children report
// it; 0 when unknown.
func peakRSSKiB() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			fields := strings.Fields(rest)
			if len(fields) > 0 {
				kib, _ := strconv.ParseInt(fields[0], 10, 64)
				return kib
			}
		}
	}
	return 0
}

// mark is the client's ready point: client built and topic metadata
// fetched. Time and CPU are measured from it.
type mark struct {
	at  time.Time
	cpu int64
}

func now() mark { return mark{time.Now(), cpuNs()} }

// ensureTopics asks the broker for the topics' metadata, which also opens
// the client's first connection, and fails if a topic is missing.
func ensureTopics(ctx context.Context, cl *kgo.Client, topics []string) error {
	req := kmsg.NewPtrMetadataRequest()
	for _, topic := range topics {
		rt := kmsg.NewMetadataRequestTopic()
		rt.Topic = kmsg.StringPtr(topic)
		req.Topics = append(req.Topics, rt)
	}
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return fmt.Errorf("fetching metadata: %w", err)
	}
	for _, topic := range resp.Topics {
		if err := kerr.ErrorForCode(topic.ErrorCode); err != nil {
			name := ""
			if topic.Topic != nil {
				name = *topic.Topic
			}
			return fmt.Errorf("metadata of %s: %w", name, err)
		}
	}
	return nil
}

func runPhase(a args) (report, error) {
	ctx := context.Background()
	start := now()
	var (
		ready, end mark
		bytes      int64
		err        error
	)
	switch a.phase {
	case "produce":
		ready, end, err = produce(ctx, a)
		bytes = int64(a.records) * int64(a.size)
	case "read":
		ready, end, bytes, err = read(ctx, a)
	case "group":
		ready, end, bytes, err = group(ctx, a)
	default:
		err = fmt.Errorf("unknown phase %q (known: produce, read, group)", a.phase)
	}
	if err != nil {
		return report{}, err
	}
	if want := int64(a.records) * int64(a.size); bytes != want {
		return report{}, fmt.Errorf("%d value bytes in %d records, expected %d", bytes, a.records, want)
	}
	return report{
		phase:   a.phase,
		records: int64(a.records),
		bytes:   bytes,
		workNs:  end.at.Sub(ready.at).Nanoseconds(),
		callNs:  end.at.Sub(start.at).Nanoseconds(),
		cpuNs:   end.cpu - ready.cpu,
		conns:   -1,
	}, nil
}

func produce(ctx context.Context, a args) (ready, end mark, err error) {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(a.bootstrap),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(lingerMs*time.Millisecond),
		kgo.ProducerBatchMaxBytes(batchBytes),
		kgo.ProducerBatchCompression(kgo.NoCompression()),
	)
	if err != nil {
		return ready, end, fmt.Errorf("creating the franz-go client: %w", err)
	}
	defer cl.Close()
	if err := ensureTopics(ctx, cl, []string{a.topic}); err != nil {
		return ready, end, err
	}
	value := payload(a.size)
	var (
		failed   atomic.Int64
		firstErr sync.Once
		first    error
	)
	ready = now()
	for i := 0; i < a.records; i++ {
		record := &kgo.Record{Topic: a.topic, Value: value}
		if a.keyed {
			record.Key = binary.BigEndian.AppendUint64(nil, uint64(i))
		}
		// Produce blocks while the client's buffer (MaxBufferedRecords,
		// 10,000 by default) is full, which is the back-pressure here.
		cl.Produce(ctx, record, func(_ *kgo.Record, err error) {
			if err != nil {
				failed.Add(1)
				firstErr.Do(func() { first = err })
			}
		})
	}
	if err := cl.Flush(ctx); err != nil {
		return ready, end, fmt.Errorf("franz-go flush: %w", err)
	}
	end = now()
	if n := failed.Load(); n > 0 {
		return ready, end, fmt.Errorf("%d of %d records failed; first error: %v", n, a.records, first)
	}
	return ready, end, nil
}

// read consumes partitions 0..N from offset 0 without a group, like the
// other clients' assigned readers.
func read(ctx context.Context, a args) (ready, end mark, bytes int64, err error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(a.bootstrap))
	if err != nil {
		return ready, end, 0, fmt.Errorf("creating the franz-go client: %w", err)
	}
	defer cl.Close()
	if err := ensureTopics(ctx, cl, []string{a.topic}); err != nil {
		return ready, end, 0, err
	}
	offsets := make(map[int32]kgo.Offset, a.partitions)
	for p := 0; p < a.partitions; p++ {
		offsets[int32(p)] = kgo.NewOffset().AtStart()
	}
	ready = now()
	cl.AddConsumePartitions(map[string]map[int32]kgo.Offset{a.topic: offsets})
	seen := 0
	for seen < a.records {
		pollCtx, cancel := context.WithTimeout(ctx, readStall)
		fetches := cl.PollFetches(pollCtx)
		cancel()
		if pollCtx.Err() != nil && fetches.NumRecords() == 0 {
			return ready, end, 0, fmt.Errorf("no record for %v; saw %d of %d", readStall, seen, a.records)
		}
		if err := fetchError(fetches); err != nil {
			return ready, end, 0, err
		}
		fetches.EachRecord(func(r *kgo.Record) {
			seen++
			bytes += int64(len(r.Value))
		})
	}
	end = now()
	return ready, end, bytes, nil
}

// fetchError is the first real error in fetches; a poll cut short by its
// context is not one.
func fetchError(fetches kgo.Fetches) error {
	var first error
	fetches.EachError(func(topic string, partition int32, err error) {
		if first == nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			first = fmt.Errorf("fetching %s/%d: %w", topic, partition, err)
		}
	})
	return first
}

// tally checks a group member's offsets as src/tally.rs does: every
// partition holds 0..n without holes and a single member reading from the
// earliest offset must see each offset once, in order.
type tally struct {
	next      []int64
	seen      int
	bytes     int64
	anomalies int
	first     string
}

func (t *tally) see(partition int32, offset int64, valueLen int) {
	if int(partition) < 0 || int(partition) >= len(t.next) {
		t.anomaly(fmt.Sprintf("record from unknown partition %d", partition))
	} else {
		wanted := t.next[partition]
		t.next[partition] = offset + 1
		if offset != wanted {
			what := "gap"
			if offset < wanted {
				what = "repeated"
			}
			t.anomaly(fmt.Sprintf("%s: partition %d offset %d, expected %d", what, partition, offset, wanted))
		}
	}
	t.seen++
	t.bytes += int64(valueLen)
}

func (t *tally) anomaly(text string) {
	if t.anomalies == 0 {
		t.first = text
	}
	t.anomalies++
}

// group reads the whole topic as the only member of a fresh classic group
// (franz-go's default cooperative-sticky balancer), from the earliest
// offset, until the last record; that record's arrival ends the timing.
func group(ctx context.Context, a args) (ready, end mark, bytes int64, err error) {
	groupID := fmt.Sprintf("peers-group-franz-%d-%d", os.Getpid(), time.Now().UnixMilli())
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(a.bootstrap),
		kgo.ConsumerGroup(groupID),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	)
	if err != nil {
		return ready, end, 0, fmt.Errorf("creating the franz-go client: %w", err)
	}
	defer cl.Close()
	if err := ensureTopics(ctx, cl, []string{a.topic}); err != nil {
		return ready, end, 0, err
	}
	t := &tally{next: make([]int64, a.partitions)}
	ready = now()
	// Subscribing starts the join, as the other clients' subscribe calls do.
	cl.AddConsumeTopics(a.topic)
	for t.seen < a.records {
		pollCtx, cancel := context.WithTimeout(ctx, readStall)
		fetches := cl.PollFetches(pollCtx)
		cancel()
		if pollCtx.Err() != nil && fetches.NumRecords() == 0 {
			return ready, end, 0, fmt.Errorf("no record for %v; saw %d of %d", readStall, t.seen, a.records)
		}
		if err := fetchError(fetches); err != nil {
			return ready, end, 0, err
		}
		fetches.EachRecord(func(r *kgo.Record) {
			t.see(r.Partition, r.Offset, len(r.Value))
			if t.seen == a.records {
				end = now()
			}
		})
	}
	if t.anomalies > 0 {
		return ready, end, 0, fmt.Errorf("%d records out of sequence in %d seen; first: %s", t.anomalies, t.seen, t.first)
	}
	if t.seen != a.records {
		return ready, end, 0, fmt.Errorf("saw %d records, expected %d", t.seen, a.records)
	}
	return ready, end, t.bytes, nil
}

// idle joins a group over the given topics, waits until it owns all of
// their partitions, then stays idle (polling, no traffic) for the window and
// reports the CPU it used meanwhile and the broker connections it holds.
func idle(a args) (report, error) {
	topics := strings.Split(a.topics, ",")
	if a.group == "" || a.topics == "" || a.partitions <= 0 {
		return report{}, errors.New("idle needs --topics, --group and --partitions")
	}
	start := now()
	var owned atomic.Int64
	assigned := make(chan struct{}, 1)
	count := func(m map[string][]int32, sign int64) {
		var n int64
		for _, ps := range m {
			n += int64(len(ps))
		}
		if owned.Add(sign*n) == int64(a.partitions) {
			select {
			case assigned <- struct{}{}:
			default:
			}
		}
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(a.bootstrap),
		kgo.ConsumerGroup(a.group),
		kgo.ConsumeTopics(topics...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, m map[string][]int32) { count(m, 1) }),
		kgo.OnPartitionsRevoked(func(_ context.Context, _ *kgo.Client, m map[string][]int32) { count(m, -1) }),
		kgo.OnPartitionsLost(func(_ context.Context, _ *kgo.Client, m map[string][]int32) { count(m, -1) }),
	)
	if err != nil {
		return report{}, fmt.Errorf("creating the franz-go client: %w", err)
	}
	defer cl.Close()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	polled := make(chan error, 1)
	go func() {
		// An application's poll loop: it would hand records over, but none
		// arrive.
		for {
			fetches := cl.PollFetches(ctx)
			if ctx.Err() != nil || fetches.IsClientClosed() {
				polled <- nil
				return
			}
			if err := fetchError(fetches); err != nil {
				polled <- err
				return
			}
		}
	}()
	select {
	case <-assigned:
	case err := <-polled:
		return report{}, fmt.Errorf("polling before the assignment was complete: %v", err)
	case <-time.After(assignTimeout):
		return report{}, fmt.Errorf("owned %d of %d partitions after %v", owned.Load(), a.partitions, assignTimeout)
	}
	from := now()
	select {
	case err := <-polled:
		return report{}, fmt.Errorf("polling during the idle window: %v", err)
	case <-time.After(time.Duration(a.secs) * time.Second):
	}
	to := now()
	if n := owned.Load(); n != int64(a.partitions) {
		return report{}, fmt.Errorf("owned %d of %d partitions at the end of the idle window", n, a.partitions)
	}
	conns, err := brokerConnections(a.bootstrap)
	if err != nil {
		return report{}, err
	}
	return report{
		phase:   "idle",
		records: int64(a.partitions),
		workNs:  to.at.Sub(from.at).Nanoseconds(),
		callNs:  from.at.Sub(start.at).Nanoseconds(),
		cpuNs:   to.cpu - from.cpu,
		conns:   conns,
	}, nil
}

// brokerConnections counts this process's established TCP connections to
// the bootstrap address's port: the socket inodes among /proc/self/fd,
// looked up in /proc/self/net/tcp and tcp6. The broker under test is a
// single node, so every broker connection goes to that port.
func brokerConnections(bootstrap string) (int, error) {
	colon := strings.LastIndex(bootstrap, ":")
	port, err := strconv.ParseUint(bootstrap[colon+1:], 10, 16)
	if colon < 0 || err != nil {
		return 0, fmt.Errorf("no port in bootstrap address %q", bootstrap)
	}
	links, err := filepath.Glob("/proc/self/fd/*")
	if err != nil {
		return 0, err
	}
	inodes := make(map[string]bool)
	for _, link := range links {
		target, err := os.Readlink(link)
		if err != nil {
			continue
		}
		if inode, ok := strings.CutPrefix(target, "socket:["); ok {
			inodes[strings.TrimSuffix(inode, "]")] = true
		}
	}
	count := 0
	for _, table := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		file, err := os.Open(table)
		if err != nil {
			continue
		}
		lines := bufio.NewScanner(file)
		lines.Scan() // header
		for lines.Scan() {
			fields := strings.Fields(lines.Text())
			// sl local_address rem_address st ... inode (field 9)
			if len(fields) < 10 || fields[3] != "01" || !inodes[fields[9]] {
				continue
			}
			remote := fields[2]
			hexPort := remote[strings.LastIndex(remote, ":")+1:]
			if p, err := strconv.ParseUint(hexPort, 16, 16); err == nil && p == port {
				count++
			}
		}
		file.Close()
	}
	return count, nil
}
