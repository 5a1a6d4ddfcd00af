// Package objstore is the object-storage seam under the s3 and hdfs engines
// and tiered offload: a narrow Store interface (Put, Get a byte range, List
// by prefix, Delete, Stat), an in-memory implementation (NewMem) and a
// local-directory one (OpenDir). The S3 implementation on minio-go lives in
// engines/objstore/s3store; every implementation passes the conformance
// suite in engines/objstore/objstoretest.
//
//	st, _ := objstore.OpenDir(objstore.DirOptions{Dir: "/var/lib/quire/objects"})
//	_ = st.Put(ctx, "shard/00000000000000000000", bytes.NewReader(b), int64(len(b)))
//	tail, _ := st.Get(ctx, "shard/00000000000000000000", 100, -1) // bytes 100..end
//
// # Contract
//
// Keys are 1 to 1024 bytes of valid UTF-8 without NUL (S3's limit), whose
// "/"-separated parts are not empty, "." or "..". No key may be a
// "/"-prefix of another ("a" and "a/b"): MinIO and the directory store keep
// keys as paths, where "a" cannot be a file and a directory at once. Callers
// use keys of a fixed depth. An object is written whole: a reader sees the old or the new
// contents of a key, never a mix, and a Put that failed leaves no partial
// object behind. Get, Stat and a missing key return an error matching
// ErrNotFound; Delete of a missing key succeeds (S3 cannot tell without an
// extra request, and callers that retry a delete want exactly that). List
// returns every key under a prefix in byte order; keys put before List was
// called and not deleted since are in it (S3 and MinIO list with
// read-after-write consistency).
//
// The directory implementation (and engines/hdfs, through KeyPath and
// ListTree) maps key "a/b" to <Dir>/a.d/b.o: every "/"
// separated part but the last is a directory with suffix ".d", the last a
// file with suffix ".o", and every byte outside [A-Za-z0-9_-] is escaped as
// %XX, so no key can name a directory, escape Dir, or collide with the
// temporary files (<Dir>/.tmp/) that Put writes, fsyncs and renames into
// place.
package objstore
