package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/shard"
)

// openShard opens the shard stored in directory dir and recovers it: see the
// package documentation ("Recovery").
func (e *Engine) openShard(name, dir string) (*Shard, error) {
	fs := e.fs
	s := &Shard{
		e:       e,
		name:    name,
		dir:     dir,
		log:     e.log,
		waiters: map[uint64]chan struct{}{},
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	b, err := vfs.ReadFile(fs, fs.PathJoin(dir, nameFile))
	if err != nil {
		if vfs.IsNotExist(err) {
			return nil, fmt.Errorf("file: %q: %w", name, shard.ErrNotFound)
		}
		return nil, fmt.Errorf("file: %q: %w", name, err)
	}
	if got, err := decodeNameFile(b); err != nil || got != name {
		return nil, s.corrupt(nameFile, 0, fmt.Sprintf("name file does not hold %q (%v)", name, err))
	}
	if b, err := vfs.ReadFile(fs, fs.PathJoin(dir, trimFile)); err == nil {
		if s.trimLow, err = decodeTrim(b); err != nil {
			return nil, s.corrupt(trimFile, 0, err.Error())
		}
	} else if !vfs.IsNotExist(err) {
		return nil, fmt.Errorf("file: %q: %w", name, err)
	}
	if b, err := vfs.ReadFile(fs, fs.PathJoin(dir, sealFile)); err == nil {
		if err := decodeSeal(b); err != nil {
			return nil, s.corrupt(sealFile, 0, err.Error())
		}
		s.sealed = true
	} else if !vfs.IsNotExist(err) {
		return nil, fmt.Errorf("file: %q: %w", name, err)
	}

	files, err := fs.List(dir)
	if err != nil {
		return nil, fmt.Errorf("file: %q: %w", name, err)
	}
	var bases []uint64
	idxFiles := map[uint64]bool{}
	for _, f := range files {
		if base, ok := parseBaseName(f, segExt); ok {
			bases = append(bases, base)
		} else if base, ok := parseBaseName(f, idxExt); ok {
			idxFiles[base] = true
		} else if strings.HasSuffix(f, tmpSuffix) {
			// An atomic write or a truncation that a crash interrupted.
			fs.Remove(fs.PathJoin(dir, f))
		}
	}
	slices.Sort(bases)
	// Index files of no local sealed segment (the active one's index is
	// rebuilt by scanning and rewritten when it is sealed; an offloaded
	// segment's is in the object store).
	removed := false
	for base := range idxFiles {
		if i, ok := slices.BinarySearch(bases, base); !ok || i == len(bases)-1 {
			fs.Remove(fs.PathJoin(dir, idxFileName(base)))
			delete(idxFiles, base)
			removed = true
		}
	}
	// Offloaded segments whose local copy is gone are read from the object
	// store. Those below the first local segment's successor may have been
	// trimmed; the trim-point check below drops them.
	remote := map[uint64]*RemoteSegment{}
	s.locs = map[uint64]RemoteSegment{}
	if e.off != nil {
		locs, err := e.off.o.Manifest.Load(context.Background(), name)
		if err != nil {
			return nil, fmt.Errorf("file: %q: load offload manifest: %w", name, err)
		}
		for i := range locs {
			rs := locs[i]
			s.locs[rs.Base] = rs
			if _, ok := slices.BinarySearch(bases, rs.Base); !ok {
				remote[rs.Base] = &rs
				bases = append(bases, rs.Base)
			}
		}
		slices.Sort(bases)
	} else if _, err := fs.Stat(fs.PathJoin(dir, manifestFile)); err == nil {
		return nil, fmt.Errorf("file: %q has offloaded segments (%s): open the engine with Options.Offload to read them", name, manifestFile)
	}
	// Segments wholly below the trim point: a trim or retention pass that a
	// crash interrupted after persisting TRIM.
	// Their objects are deleted by the offloader (collectGarbage).
	for len(bases) > 1 && bases[1] <= s.trimLow {
		if remote[bases[0]] == nil {
			s.removeSegmentFiles(bases[0])
			removed = true
		}
		bases = bases[1:]
	}
	if len(bases) > 0 && remote[bases[len(bases)-1]] != nil {
		// The active segment is never offloaded: its local file is missing.
		return nil, s.corrupt(segFileName(bases[len(bases)-1]), 0, "the last segment is missing (only an offloaded copy of it exists)")
	}
	if removed {
		if err := vfs.SyncDir(fs, dir); err != nil {
			return nil, fmt.Errorf("file: %q: %w", name, err)
		}
	}

	var segs []*segment
	for i, base := range bases[:max(len(bases)-1, 0)] {
		if rs := remote[base]; rs != nil {
			if rs.End != bases[i+1] {
				return nil, s.corrupt(segFileName(base), 0, fmt.Sprintf("offloaded segment ends at offset %d but the next segment starts at %d", rs.End, bases[i+1]))
			}
			seg := s.newSegment(base)
			seg.end, seg.size, seg.maxTs = rs.End, rs.Size, rs.MaxTs
			seg.remote.Store(rs)
			seg.sealed.Store(true)
			segs = append(segs, seg)
			continue
		}
		seg, err := s.openSealed(base, bases[i+1])
		if err != nil {
			return nil, err
		}
		segs = append(segs, seg)
	}
	var active *segment
	var wf vfs.File
	var ib indexBuilder
	if len(bases) == 0 {
		active, wf, err = s.createSegment(s.trimLow, e.opts.Now().UnixMilli())
		ib = newIndexBuilder(e.opts.IndexIntervalBytes)
	} else {
		active, wf, ib, err = s.recoverActive(bases[len(bases)-1])
	}
	if err != nil {
		var ce *shard.CorruptError
		if errors.As(err, &ce) {
			return nil, err
		}
		return nil, fmt.Errorf("file: %q: %w", name, err)
	}
	if active.end < s.trimLow {
		// Only after a crash with the interval or none policy: records that
		// were acknowledged (and trimmed) were lost. Restart at the trim
		// point so that offsets stay dense above the low watermark.
		s.log.Warn("file: recovered log ends below the trim point; restarting at the trim point",
			"shard", name, "end", active.end, "trim", s.trimLow)
		wf.Close()
		for _, seg := range segs {
			s.removeSegmentFiles(seg.base)
		}
		s.removeSegmentFiles(active.base)
		segs = nil
		active, wf, err = s.createSegment(s.trimLow, e.opts.Now().UnixMilli())
		if err != nil {
			return nil, fmt.Errorf("file: %q: %w", name, err)
		}
		ib = newIndexBuilder(e.opts.IndexIntervalBytes)
	}
	segs = append(segs, active)
	s.segs = segs
	s.high = active.end
	s.low = max(s.trimLow, segs[0].base)
	s.c = committer{
		s:      s,
		active: active,
		wf:     wf,
		owner:  active.reader,
		wpos:   active.size,
		next:   active.end,
		ib:     ib,
		sealed: s.sealed,
	}
	if s.sealed {
		s.qerr = fmt.Errorf("file: %q: %w", name, shard.ErrSealed)
	}
	go s.run()
	e.m.openShards.Inc()
	return s, nil
}

func (s *Shard) removeSegmentFiles(base uint64) {
	fs := s.e.fs
	for _, p := range []string{fs.PathJoin(s.dir, segFileName(base)), fs.PathJoin(s.dir, idxFileName(base))} {
		if err := fs.Remove(p); err != nil && !vfs.IsNotExist(err) {
			s.log.Warn("file: remove", "shard", s.name, "file", p, "err", err)
		}
	}
}

// corrupt returns a CorruptError for file (relative to the shard directory
// or absolute) at byte pos, logging it.
func (s *Shard) corrupt(file string, pos int64, reason string) error {
	if !strings.HasPrefix(file, s.dir) {
		file = s.e.fs.PathJoin(s.dir, file)
	}
	return s.corruptAt(file, pos, reason)
}

// openSealed returns sealed segment base, whose successor starts at next,
// from its index file's summary, or by scanning it if the index is missing
// or does not match (or VerifySealedOnOpen is set).
func (s *Shard) openSealed(base, next uint64) (*segment, error) {
	fs := s.e.fs
	seg := s.newSegment(base)
	fi, err := fs.Stat(seg.path)
	if err != nil {
		return nil, err
	}
	size := fi.Size()
	if !s.e.opts.VerifySealedOnOpen {
		sum, err := readIndexSummary(fs, seg.idxPath)
		if err == nil && sum.base == base && sum.end == next && sum.size == size {
			seg.end, seg.size, seg.maxTs = sum.end, sum.size, sum.maxTs
			seg.sealed.Store(true)
			return seg, nil
		}
		if !vfs.IsNotExist(err) {
			s.log.Warn("file: segment index missing or stale; rebuilding it", "shard", s.name, "file", seg.idxPath, "err", err)
		}
	}
	f, err := fs.Open(seg.path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sum, entries, err := s.scanSealed(seg, f, size)
	if err != nil {
		return nil, err
	}
	if sum.end != next {
		return nil, s.corrupt(seg.path, size, fmt.Sprintf("segment ends at offset %d but the next segment starts at %d", sum.end, next))
	}
	seg.end, seg.size, seg.maxTs = sum.end, sum.size, sum.maxTs
	seg.sealed.Store(true)
	if err := vfs.WriteFileAtomic(fs, seg.idxPath, encodeIndex(sum, entries)); err != nil {
		s.log.Warn("file: write segment index", "shard", s.name, "file", seg.idxPath, "err", err)
	}
	return seg, nil
}

func readIndexSummary(fs vfs.FS, path string) (segSummary, error) {
	f, err := fs.Open(path)
	if err != nil {
		return segSummary{}, err
	}
	defer f.Close()
	b := make([]byte, idxHeaderSize)
	if _, err := f.ReadAt(b, 0); err != nil {
		return segSummary{}, err
	}
	sum, _, _, err := decodeIndexHeader(b)
	return sum, err
}

// loadIndex returns the index entries of sealed segment seg from its index
// file, or by scanning f if the file is missing or damaged.
func (s *Shard) loadIndex(seg *segment, f segFile) ([]indexEntry, error) {
	var b []byte
	var err error
	rs := seg.remote.Load()
	if _, remote := f.(*remoteFile); !remote {
		b, err = vfs.ReadFile(s.e.fs, seg.idxPath)
	}
	if rs != nil && rs.IndexKey != "" && (b == nil || vfs.IsNotExist(err)) {
		b, err = s.e.off.o.Store.Get(context.Background(), rs.IndexKey, 0, -1)
	}
	if err == nil {
		sum, entries, derr := decodeIndex(b)
		if derr == nil && sum.base == seg.base && sum.end == seg.end && sum.size == seg.size {
			return entries, nil
		}
		err = derr
		if err == nil {
			err = errors.New("index does not match its segment")
		}
	}
	s.log.Warn("file: segment index unusable; scanning the segment", "shard", s.name, "file", seg.idxPath, "err", err)
	_, entries, err := s.scanSealed(seg, f, seg.size)
	return entries, err
}

// scanSealed checks every record of a sealed segment. Any invalid record is
// corruption: sealed segments were fully synced before the next one was
// created.
func (s *Shard) scanSealed(seg *segment, f io.ReaderAt, size int64) (segSummary, []indexEntry, error) {
	hb := make([]byte, segHeaderSize)
	if _, err := f.ReadAt(hb, 0); err != nil {
		return segSummary{}, nil, s.corrupt(seg.path, 0, fmt.Sprintf("read segment header: %v", err))
	}
	hdr, err := decodeSegHeader(hb)
	if err != nil {
		return segSummary{}, nil, s.corrupt(seg.path, 0, err.Error())
	}
	if hdr.base != seg.base {
		return segSummary{}, nil, s.corrupt(seg.path, 0, fmt.Sprintf("segment header says base %d", hdr.base))
	}
	ib := newIndexBuilder(s.e.opts.IndexIntervalBytes)
	var entries []indexEntry
	next := seg.base
	it := recordIter{r: f, pos: segHeaderSize, limit: size, chunk: 1 << 20}
	for {
		_, pos, info, st, err := it.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return segSummary{}, nil, fmt.Errorf("read %s: %w", seg.path, err)
		}
		if st != recOK {
			return segSummary{}, nil, s.corrupt(seg.path, pos, st.String()+" in a sealed segment")
		}
		if info.offset != next {
			return segSummary{}, nil, s.corrupt(seg.path, pos, fmt.Sprintf("record has offset %d, want %d", info.offset, next))
		}
		entries = ib.add(entries, info.offset, pos, info.ts)
		next++
	}
	return segSummary{base: seg.base, end: next, size: size, maxTs: ib.maxTs}, entries, nil
}

// recoverActive opens the last segment for appending: it scans every record,
// rebuilds the index, truncates a torn tail and reports mid-segment
// corruption.
func (s *Shard) recoverActive(base uint64) (*segment, vfs.File, indexBuilder, error) {
	fs := s.e.fs
	seg := s.newSegment(base)
	ib := newIndexBuilder(s.e.opts.IndexIntervalBytes)
	f, err := fs.OpenReadWrite(seg.path, vfs.CategoryShard)
	if err != nil {
		return nil, nil, ib, err
	}
	fail := func(err error) (*segment, vfs.File, indexBuilder, error) {
		f.Close()
		return nil, nil, ib, err
	}
	fi, err := f.Stat()
	if err != nil {
		return fail(err)
	}
	size := fi.Size()
	hb := make([]byte, segHeaderSize)
	var hdr segHeader
	herr := errors.New("segment shorter than its header")
	if size >= segHeaderSize {
		if _, err := f.ReadAt(hb, 0); err != nil {
			return fail(err)
		}
		hdr, herr = decodeSegHeader(hb)
	}
	if herr != nil {
		// A segment is synced with its header before it is used, so a bad
		// header can only be a segment whose creation a crash interrupted:
		// then nothing but zeros follows.
		at, err := validRecordAfter(f, 0, size, base)
		if err != nil {
			return fail(err)
		}
		if at >= 0 {
			return fail(s.corrupt(seg.path, 0, fmt.Sprintf("%v, but a valid record follows at byte %d", herr, at)))
		}
		s.log.Warn("file: recovery recreated a segment whose creation was interrupted", "shard", s.name, "file", seg.path, "dropped_bytes", size)
		if size > 0 {
			s.e.m.truncations.Inc()
			s.e.m.truncatedBytes.Add(float64(size))
		}
		f.Close()
		seg, f, err := s.createSegment(base, s.e.opts.Now().UnixMilli())
		return seg, f, ib, err
	}
	if hdr.base != base {
		return fail(s.corrupt(seg.path, 0, fmt.Sprintf("segment header says base %d", hdr.base)))
	}
	seg.created = hdr.created
	next := base
	end := size
	it := recordIter{r: f, pos: segHeaderSize, limit: size, chunk: 1 << 20}
	for {
		_, pos, info, st, err := it.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fail(err)
		}
		if st == recOK && info.offset != next {
			return fail(s.corrupt(seg.path, pos, fmt.Sprintf("record has offset %d, want %d", info.offset, next)))
		}
		if st == recBadShape {
			return fail(s.corrupt(seg.path, pos, st.String()))
		}
		if st != recOK {
			torn, why, err := classifyInvalid(f, size, pos, st, info, next)
			if err != nil {
				return fail(err)
			}
			if !torn {
				return fail(s.corrupt(seg.path, pos, why))
			}
			end = pos
			s.log.Warn("file: recovery truncated a torn tail", "shard", s.name, "file", seg.path,
				"byte", pos, "dropped_bytes", size-pos, "next_offset", next, "why", why)
			s.e.m.truncations.Inc()
			s.e.m.truncatedBytes.Add(float64(size - pos))
			if f, err = s.truncate(f, seg.path, pos); err != nil {
				return nil, nil, ib, fmt.Errorf("truncate %s: %w", seg.path, err)
			}
			break
		}
		seg.index = ib.add(seg.index, info.offset, pos, info.ts)
		next++
	}
	seg.end, seg.size, seg.maxTs = next, end, ib.maxTs
	seg.reader = &segReader{seg: seg, f: f, refs: 1}
	return seg, f, ib, nil
}

// classifyInvalid decides whether the invalid record at pos of the last
// segment is a torn tail (true) or corruption, and says why.
//
// It is torn if its extent (its claimed length, or the next 4 KiB if the
// length is unusable) overlaps a lost page — a 4 KiB-aligned block that is
// all zeros from the record (or the block start) to the block end — or if
// no valid record follows it. Otherwise valid records follow non-zero
// garbage that no crash can explain: corruption.
func classifyInvalid(f io.ReaderAt, size, pos int64, st recStatus, info recInfo, next uint64) (bool, string, error) {
	end := pos + pageSize
	if (st == recBadCRC || st == recShort) && info.size > 0 {
		end = pos + int64(info.size)
	}
	end = min(end, size)
	lost, err := lostPage(f, pos, end, size)
	if err != nil {
		return false, "", err
	}
	if lost {
		return true, st.String() + " overlapping a lost (zeroed) page", nil
	}
	at, err := validRecordAfter(f, pos+1, size, next)
	if err != nil {
		return false, "", err
	}
	if at < 0 {
		return true, st.String() + " with no valid record after it", nil
	}
	return false, fmt.Sprintf("%v at offset %d, but a valid record follows at byte %d", st, next, at), nil
}

// lostPage reports whether a 4 KiB-aligned block overlapping [pos, end) is
// all zeros from max(pos, block start) to the block's end (or EOF).
func lostPage(f io.ReaderAt, pos, end, size int64) (bool, error) {
	for bs := pos &^ (pageSize - 1); bs < end; bs += pageSize {
		lo, hi := max(pos, bs), min(bs+pageSize, size)
		if hi <= lo {
			continue
		}
		zero, err := allZero(f, lo, hi)
		if err != nil || zero {
			return zero, err
		}
	}
	return false, nil
}

// allZero reports whether bytes [lo, hi) of f are all zero.
func allZero(f io.ReaderAt, lo, hi int64) (bool, error) {
	buf := make([]byte, min(hi-lo, 1<<20))
	for lo < hi {
		b := buf[:min(int64(len(buf)), hi-lo)]
		if n, err := f.ReadAt(b, lo); n < len(b) {
			return false, err
		}
		for _, c := range b {
			if c != 0 {
				return false, nil
			}
		}
		lo += int64(len(b))
	}
	return true, nil
}

// validRecordAfter returns the position of the first valid record at or
// after from whose offset is at least next, or -1.
func validRecordAfter(f io.ReaderAt, from, size int64, next uint64) (int64, error) {
	const window = 1 << 20
	if size-from < recHeaderSize {
		return -1, nil
	}
	buf := make([]byte, min(window+recHeaderSize, size-from))
	var scratch []byte
	for base := from; base+recHeaderSize <= size; base += window {
		b := buf[:min(int64(len(buf)), size-base)]
		if n, err := f.ReadAt(b, base); n < len(b) {
			return -1, err
		}
		for q := 0; q < window && q+recHeaderSize <= len(b); q++ {
			h := b[q:]
			body := uint64(le.Uint32(h))
			if body < recMinBody || body > MaxRecordSize-recPrefix || base+int64(q)+recPrefix+int64(body) > size {
				continue
			}
			off := le.Uint64(h[8:])
			if off < next || off-next > uint64(size) {
				continue
			}
			if uint64(le.Uint32(h[24:]))+uint64(le.Uint32(h[28:]))+hdrFixed*uint64(le.Uint32(h[32:])) > body-recMinBody {
				continue
			}
			n := recPrefix + int(body)
			rec := b[q:min(q+n, len(b))]
			if len(rec) < n {
				if cap(scratch) < n {
					scratch = make([]byte, n)
				}
				rec = scratch[:n]
				if k, err := f.ReadAt(rec, base+int64(q)); k < n {
					return -1, err
				}
			}
			if _, st := checkRecord(rec); st == recOK {
				return base + int64(q), nil
			}
		}
	}
	return -1, nil
}

// truncate cuts the file at path to size and makes that durable. Files that
// cannot be truncated in place (the in-memory and error-injecting file
// systems) are rewritten: the prefix is copied to a temporary file that is
// synced and renamed over the original.
func (s *Shard) truncate(f vfs.File, path string, size int64) (vfs.File, error) {
	if t, ok := f.(interface{ Truncate(int64) error }); ok {
		if err := t.Truncate(size); err != nil {
			f.Close()
			return nil, err
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, err
		}
		return f, nil
	}
	fs := s.e.fs
	tmp := path + tmpSuffix
	out, err := fs.Create(tmp, vfs.CategoryShard)
	if err != nil {
		f.Close()
		return nil, err
	}
	buf := make([]byte, min(size, 1<<20))
	for pos := int64(0); pos < size; {
		b := buf[:min(int64(len(buf)), size-pos)]
		if n, err := f.ReadAt(b, pos); n < len(b) {
			f.Close()
			out.Close()
			return nil, err
		}
		if _, err := out.WriteAt(b, pos); err != nil {
			f.Close()
			out.Close()
			return nil, err
		}
		pos += int64(len(b))
	}
	f.Close()
	if err := out.Sync(); err != nil {
		out.Close()
		return nil, err
	}
	if err := out.Close(); err != nil {
		return nil, err
	}
	if err := fs.Rename(tmp, path); err != nil {
		return nil, err
	}
	if err := vfs.SyncDir(fs, s.dir); err != nil {
		return nil, err
	}
	return fs.OpenReadWrite(path, vfs.CategoryShard)
}
