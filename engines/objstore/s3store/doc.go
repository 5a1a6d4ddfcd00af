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
// # Errors
//
// NoSuchKey maps to objstore.ErrNotFound and InvalidRange to
// objstore.ErrInvalidRange. Open checks the bucket: a missing bucket is
// created (Options.CreateBucket, default on), and an AccessDenied answer to
// either step says plainly that the credentials may not use or create it.
package s3store
