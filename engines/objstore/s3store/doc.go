// Package s3store implements the objstore seam on S3 and S3-compatible
// servers (AWS S3, MinIO, versitygw, ...) with minio-go/v7.
//
//	st, err := s3store.Open(ctx, s3store.Options{
//		Endpoint: "127.0.0.1:9000", Bucket: "quire", Region: "us-east-1",
//		AccessKey: "...", SecretKey: "...", PathStyle: true,
//	})
//
// # Why minio-go and not aws-sdk-go-v2
//
// Quire's data path is four calls: PUT an object (a batch of records, or a
// sealed segment of up to hundreds of MiB for offload), GET a byte range,
// LIST a prefix, DELETE. minio-go does each in one call: PutObject streams a
// reader of known size and switches to a parallel multipart upload by itself
// above PartSize, where aws-sdk-go-v2 needs its separate upload manager
// (feature/s3/manager) and a second code path. It is one module with a
// handful of small dependencies, against aws-sdk-go-v2's service module plus
// config, credentials, smithy and their transitive modules; its default
// path-style addressing and signature handling are what MinIO and versitygw
// are tested with upstream, and it still speaks to AWS S3 itself
// (virtual-host style, regions, SigV4). Its credential providers cover the
// environment (AWS_* and MINIO_* variables) and the shared credentials
// files, and EC2/ECS instance roles when Options.IAM is set. aws-sdk-go-v2
// would win on AWS-only features (SSO profiles, assume-role chains,
// S3 Express) that Quire does not use; the seam keeps that switch local to
// this package should it ever be needed.
//
// # Checksums
//
// Store is an objstore.ChecksumPutter: PutCRC32C sends the caller's
// CRC-32C with the upload and the server checks the bytes it received
// against it, so tiered offload (objstore.PutVerified) needs no read-back.
// An object of at most PartSize goes in one PUT with the CRC in the
// x-amz-checksum-crc32c header (a mismatch is refused: BadDigest, nothing
// stored). A larger one goes in parts, each with the CRC-32C of its bytes in
// a trailer (STREAMING-UNSIGNED-PAYLOAD-TRAILER: versitygw 1.8 rejects the
// signed-trailer variant with a wrong-checksum error), and the server
// answers the full object's CRC-32C (FULL_OBJECT), compared with the
// caller's; an object that differs is deleted. The payload of those parts is
// then not covered by the signature, as with every upload over TLS; over
// plain HTTP the CRCs still catch corruption, not tampering. A server that
// refuses checksums (NotImplemented, InvalidArgument, InvalidRequest) gets
// plain PUTs from then on and PutVerified reads the object back; Put itself
// is unchanged (minio-go's streaming-signed upload).
//
// # Errors
//
// NoSuchKey maps to objstore.ErrNotFound and InvalidRange to
// objstore.ErrInvalidRange. Open checks the bucket: a missing bucket is
// created (Options.CreateBucket, default on), and an AccessDenied answer to
// either step says plainly that the credentials may not use or create it.
package s3store
