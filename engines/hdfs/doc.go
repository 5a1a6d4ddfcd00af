// Package hdfs is the "hdfs" shard engine: the s3 engine (engines/s3) on an
// HDFS directory instead of a bucket, through the objstore seam. Store is
// the objstore.Store on HDFS, with colinmarc/hdfs/v2 (a pure-Go HDFS client:
// no JVM, no libhdfs).
//
//	e, err := hdfs.Open(ctx, hdfs.Options{
//		Namenode: "namenode:8020", Path: "/quire", User: "quire",
//		Engine: s3.Options{Meta: kv, FlushInterval: 200 * time.Millisecond},
//	})
//
// Options' Namenode, Path and User are the [storage.hdfs] configuration
// section; Options.Engine carries the engine settings shared with s3 (meta,
// flush, retention, cache).
//
// # Layout and atomicity
//
// Objects use the directory store's tree layout (objstore.KeyPath): key
// "a/b" is the file <Path>/a.d/b.o. Put writes <Path>/.tmp/<random>,
// closes it (HDFS acknowledges the close once the datanode pipeline has the
// data and the namenode has completed the file), then renames it over the
// final name, which HDFS does atomically on the namenode: readers see the
// old object or the new one, never a part. Temporary files older than an
// hour, left by a crashed writer, are removed when a Store opens.
//
// # Testing
//
// No HDFS cluster can run on Quire's build machines (Debian ships no
// Hadoop, and Maven is unreachable), and no fake HDFS server is written:
// the tree layout is the directory store's, tested there, and this
// package's integration test runs the objstore and shard conformance suites
// against a real cluster when QUIRE_HDFS_NAMENODE (host:port; QUIRE_HDFS_USER
// optional) is set, and is skipped otherwise, in CI as well.
package hdfs
