package s3store

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/quiremq/quire/engines/objstore"
)

// Defaults applied by EnsureDefaults.
const (
	DefaultRegion   = "us-east-1"
	DefaultPartSize = 16 << 20
	// minPartSize is S3's smallest multipart part.
	minPartSize = 5 << 20
)

// Options configure a Store. Field names follow the [storage.s3] section of
// Quire's configuration.
type Options struct {
	// Endpoint is "host:port" or a URL "http://host:port" /
	// "https://host:port" (a scheme overrides TLS). Required.
	Endpoint string
	// Bucket is the bucket's name. Required.
	Bucket string
	// Region is the bucket's region; default us-east-1.
	Region string
	// AccessKey and SecretKey are static credentials. When both are empty
	// the standard chain is used: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
	// MINIO_ROOT_USER/MINIO_ROOT_PASSWORD (and MINIO_ACCESS_KEY/
	// MINIO_SECRET_KEY), ~/.aws/credentials, ~/.mc/config.json, and the
	// instance role when IAM is set.
	AccessKey, SecretKey string
	// SessionToken goes with temporary static credentials.
	SessionToken string
	// IAM adds EC2/ECS instance-role credentials to the chain (it asks the
	// instance metadata endpoint, so it is off unless running on AWS).
	IAM bool
	// PathStyle addresses the bucket as endpoint/bucket (MinIO, versitygw)
	// instead of bucket.endpoint (AWS's virtual-host style).
	PathStyle bool
	// TLS connects with HTTPS.
	TLS bool
	// DontCreateBucket makes Open fail when the bucket does not exist,
	// instead of creating it.
	DontCreateBucket bool
	// PartSize is the multipart part size; objects larger than it are
	// uploaded in parallel parts. Default 16 MiB, at least 5 MiB.
	PartSize uint64
	// Transport is the HTTP transport; default minio-go's.
	Transport http.RoundTripper
}

// EnsureDefaults fills zero fields with their defaults.
func (o *Options) EnsureDefaults() {
	if o.Region == "" {
		o.Region = DefaultRegion
	}
	if o.PartSize == 0 {
		o.PartSize = DefaultPartSize
	}
}

// Validate checks the options (call EnsureDefaults first).
func (o *Options) Validate() error {
	var errs []error
	if o.Endpoint == "" {
		errs = append(errs, errors.New("s3store: Endpoint is required"))
	} else if _, _, err := o.hostAndTLS(); err != nil {
		errs = append(errs, err)
	}
	if o.Bucket == "" {
		errs = append(errs, errors.New("s3store: Bucket is required"))
	}
	if (o.AccessKey == "") != (o.SecretKey == "") {
		errs = append(errs, errors.New("s3store: AccessKey and SecretKey must be given together"))
	}
	if o.PartSize < minPartSize {
		errs = append(errs, fmt.Errorf("s3store: PartSize must be at least %d, got %d", minPartSize, o.PartSize))
	}
	return errors.Join(errs...)
}

// hostAndTLS splits Endpoint into minio-go's host:port and TLS flag.
func (o *Options) hostAndTLS() (string, bool, error) {
	if !strings.Contains(o.Endpoint, "://") {
		if strings.ContainsAny(o.Endpoint, "/?#") {
			return "", false, fmt.Errorf("s3store: Endpoint %q must be host:port or a URL without a path", o.Endpoint)
		}
		return o.Endpoint, o.TLS, nil
	}
	u, err := url.Parse(o.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return "", false, fmt.Errorf("s3store: Endpoint %q must be host:port or http(s)://host:port", o.Endpoint)
	}
	return u.Host, u.Scheme == "https", nil
}

func (o *Options) credentials() *credentials.Credentials {
	if o.AccessKey != "" {
		return credentials.NewStaticV4(o.AccessKey, o.SecretKey, o.SessionToken)
	}
	chain := []credentials.Provider{
		&credentials.EnvAWS{}, &credentials.EnvMinio{},
		&credentials.FileAWSCredentials{}, &credentials.FileMinioClient{},
	}
	if o.IAM {
		chain = append(chain, &credentials.IAM{})
	}
	return credentials.NewChainCredentials(chain)
}

// Store is an objstore.Store on one S3 bucket.
type Store struct {
	c *minio.Client
	// ck sends checksums as trailers (PutCRC32C); c does not, so Put
	// streams exactly as minio-go's default client does.
	ck     *minio.Client
	bucket string
	part   uint64
	// noChecksum is set once the server refused a checksummed upload:
	// PutCRC32C then puts plainly and leaves the check to the caller.
	noChecksum atomic.Bool
}

var (
	_ objstore.Store          = (*Store)(nil)
	_ objstore.ChecksumPutter = (*Store)(nil)
)

// Open connects to the endpoint and checks the bucket, creating it when it
// is missing unless DontCreateBucket is set. Credentials that may not use or
// create the bucket fail here with an error that says so.
func Open(ctx context.Context, opts Options) (*Store, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	host, tls, _ := opts.hostAndTLS()
	creds := opts.credentials()
	if opts.AccessKey == "" {
		v, err := creds.GetWithContext(&credentials.CredContext{})
		if err != nil || v.AccessKeyID == "" {
			return nil, fmt.Errorf("s3store: no credentials for %s: set access_key and secret_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a shared credentials file (%v)", opts.Endpoint, err)
		}
	}
	lookup := minio.BucketLookupAuto
	if opts.PathStyle {
		lookup = minio.BucketLookupPath
	}
	mo := minio.Options{
		Creds: creds, Secure: tls, Region: opts.Region, BucketLookup: lookup, Transport: opts.Transport,
	}
	c, err := minio.New(host, &mo)
	if err != nil {
		return nil, fmt.Errorf("s3store: client for %s: %w", opts.Endpoint, err)
	}
	mo.TrailingHeaders = true
	ck, err := minio.New(host, &mo)
	if err != nil {
		return nil, fmt.Errorf("s3store: client for %s: %w", opts.Endpoint, err)
	}
	s := &Store{c: c, ck: ck, bucket: opts.Bucket, part: opts.PartSize}
	if err := s.ensureBucket(ctx, opts); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Store) ensureBucket(ctx context.Context, opts Options) error {
	ok, err := s.c.BucketExists(ctx, s.bucket)
	if err != nil {
		if denied(err) {
			return fmt.Errorf("s3store: bucket %q at %s: access denied: check access_key and secret_key; the credentials may not use this bucket: %w", s.bucket, opts.Endpoint, err)
		}
		return fmt.Errorf("s3store: bucket %q at %s: %w", s.bucket, opts.Endpoint, err)
	}
	if ok {
		return nil
	}
	if opts.DontCreateBucket {
		return fmt.Errorf("s3store: bucket %q does not exist at %s (and creating it is turned off)", s.bucket, opts.Endpoint)
	}
	err = s.c.MakeBucket(ctx, s.bucket, minio.MakeBucketOptions{Region: opts.Region})
	if err != nil {
		switch code := minio.ToErrorResponse(err).Code; {
		case code == "BucketAlreadyOwnedByYou" || code == "BucketAlreadyExists":
			return nil // created concurrently
		case denied(err):
			return fmt.Errorf("s3store: bucket %q does not exist at %s and the credentials may not create it (create it, or grant s3:CreateBucket): %w", s.bucket, opts.Endpoint, err)
		}
		return fmt.Errorf("s3store: create bucket %q at %s: %w", s.bucket, opts.Endpoint, err)
	}
	return nil
}

func denied(err error) bool {
	r := minio.ToErrorResponse(err)
	return r.Code == "AccessDenied" || r.Code == "InvalidAccessKeyId" || r.Code == "SignatureDoesNotMatch" || r.StatusCode == http.StatusForbidden
}

// mapErr turns S3 error codes into the seam's errors.
func (s *Store) mapErr(op, key string, err error) error {
	r := minio.ToErrorResponse(err)
	switch {
	case r.Code == "NoSuchKey" || (r.StatusCode == http.StatusNotFound && r.Code != "NoSuchBucket"):
		return &objstore.NotFoundError{Key: key}
	case r.Code == "InvalidRange" || r.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		return fmt.Errorf("%w: %s %q: %v", objstore.ErrInvalidRange, op, key, err)
	case r.Code == "NoSuchBucket":
		return fmt.Errorf("s3store: %s %q: bucket %q does not exist (deleted after start?): %w", op, key, s.bucket, err)
	}
	return fmt.Errorf("s3store: %s %q: %w", op, key, err)
}

// Put uploads the object; above PartSize as a parallel multipart upload.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := objstore.ValidateKey(key); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("s3store: put %q: negative size %d", key, size)
	}
	_, err := s.c.PutObject(ctx, s.bucket, key, r, size, minio.PutObjectOptions{
		ContentType: "application/octet-stream", PartSize: s.part,
	})
	if err != nil {
		return s.mapErr("put", key, err)
	}
	return nil
}

// PutCRC32C uploads the object with its CRC-32C checked by the server
// (x-amz-checksum-crc32c; for a multipart upload, each part's and the
// full object's, FULL_OBJECT mode) and compares the checksum the server
// answers with crc. A server that answers none (verified false) stored the
// object unchecked; one that refuses checksummed uploads altogether gets
// plain Puts from then on.
func (s *Store) PutCRC32C(ctx context.Context, key string, r io.Reader, size int64, crc uint32) (bool, error) {
	if err := objstore.ValidateKey(key); err != nil {
		return false, err
	}
	if size < 0 {
		return false, fmt.Errorf("s3store: put %q: negative size %d", key, size)
	}
	if size == 0 {
		// minio-go sends no checksum with an empty body: an empty object's
		// CRC is 0, and a successful PUT of 0 bytes stored 0 bytes.
		if crc != 0 {
			return false, objstore.ChecksumError(key, 0, crc)
		}
		return true, s.Put(ctx, key, r, 0)
	}
	if s.noChecksum.Load() {
		return false, s.Put(ctx, key, r, size)
	}
	seeker, _ := r.(io.Seeker)
	var start int64
	if seeker != nil {
		var err error
		if start, err = seeker.Seek(0, io.SeekCurrent); err != nil {
			seeker = nil
		}
	}
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], crc)
	want := base64.StdEncoding.EncodeToString(sum[:])
	opts := minio.PutObjectOptions{ContentType: "application/octet-stream", PartSize: s.part}
	if uint64(size) <= s.part {
		// One PUT: the server checks the body against our CRC in a header.
		opts.UserMetadata = map[string]string{"x-amz-checksum-crc32c": want}
	} else {
		// Multipart: each part carries the CRC of its bytes in a trailer and
		// the server combines them into the object's (FULL_OBJECT), which
		// must then be ours. Trailers go with an unsigned payload, as every
		// upload over TLS does: versitygw miscomputes the CRC of a signed
		// trailer stream, and the CRCs check the bytes anyway.
		opts.Checksum = minio.ChecksumFullObjectCRC32C
		opts.DisableContentSha256 = true
	}
	info, err := s.ck.PutObject(ctx, s.bucket, key, r, size, opts)
	if err != nil {
		switch code := minio.ToErrorResponse(err).Code; {
		case code == "BadDigest" || code == "XAmzContentChecksumMismatch" || code == "InvalidChecksum":
			return false, fmt.Errorf("s3store: put %q: %w: %w", key, objstore.ErrChecksum, err)
		case checksumsUnsupported(err):
			// Only the first refusal costs a request: the object was not
			// stored, so put it plainly if the reader can start again.
			s.noChecksum.Store(true)
			if seeker == nil {
				return false, fmt.Errorf("s3store: put %q: the server refused checksums (the next put goes without): %w", key, err)
			}
			if _, err := seeker.Seek(start, io.SeekStart); err != nil {
				return false, fmt.Errorf("s3store: put %q: rewind for a put without checksum: %w", key, err)
			}
			return false, s.Put(ctx, key, r, size)
		}
		return false, s.mapErr("put", key, err)
	}
	if info.ChecksumCRC32C == "" {
		return false, nil
	}
	if got := info.ChecksumCRC32C; got != want {
		// The client hashes what it sends, so this means the reader's bytes
		// were not the ones the caller hashed.
		if derr := s.Delete(ctx, key); derr != nil {
			return false, fmt.Errorf("s3store: put %q: %w: server has CRC-32C %s, want %08x (and deleting it failed: %v)", key, objstore.ErrChecksum, got, crc, derr)
		}
		return false, fmt.Errorf("s3store: put %q: %w: server has CRC-32C %s, want %08x", key, objstore.ErrChecksum, got, crc)
	}
	return true, nil
}

// checksumsUnsupported tells a server's refusal of checksum headers or
// trailers (a request it cannot parse) from other failures.
func checksumsUnsupported(err error) bool {
	r := minio.ToErrorResponse(err)
	switch r.Code {
	case "NotImplemented", "InvalidArgument", "InvalidRequest", "UnsupportedChecksum", "MissingContentLength":
		return !denied(err)
	}
	return r.StatusCode == http.StatusNotImplemented
}

// Get reads a byte range with one ranged GET.
func (s *Store) Get(ctx context.Context, key string, off, n int64) ([]byte, error) {
	if err := objstore.ValidateKey(key); err != nil {
		return nil, err
	}
	if off < 0 {
		return nil, fmt.Errorf("%w: negative offset %d for %q", objstore.ErrInvalidRange, off, key)
	}
	if n == 0 {
		st, err := s.Stat(ctx, key)
		if err != nil {
			return nil, err
		}
		if off > st.Size {
			return nil, fmt.Errorf("%w: offset %d beyond %q (%d bytes)", objstore.ErrInvalidRange, off, key, st.Size)
		}
		return []byte{}, nil
	}
	var opts minio.GetObjectOptions
	switch {
	case off == 0 && n < 0:
	case n < 0:
		_ = opts.SetRange(off, 0)
	default:
		_ = opts.SetRange(off, off+n-1)
	}
	// Core's GetObject is one request whose answer carries the length, so
	// the body is read into one buffer of that size.
	body, info, _, err := minio.Core{Client: s.c}.GetObject(ctx, s.bucket, key, opts)
	if err != nil {
		return nil, s.mapErr("get", key, err)
	}
	defer body.Close()
	if info.Size < 0 || (n > 0 && info.Size > n) {
		return nil, fmt.Errorf("s3store: get %q: the server answered %d bytes for a range of %d", key, info.Size, n)
	}
	b := make([]byte, info.Size)
	if _, err := io.ReadFull(body, b); err != nil {
		return nil, s.mapErr("get", key, err)
	}
	return b, nil
}

// List lists every object under prefix.
func (s *Store) List(ctx context.Context, prefix string) ([]objstore.ObjectInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []objstore.ObjectInfo
	for o := range s.c.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			return nil, s.mapErr("list", prefix, o.Err)
		}
		out = append(out, objstore.ObjectInfo{Key: o.Key, Size: o.Size, ModTime: o.LastModified})
	}
	if err := ctx.Err(); err != nil { // the listing stops early on cancel
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// Delete removes the object (S3 answers success for a missing one).
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := objstore.ValidateKey(key); err != nil {
		return err
	}
	if err := s.c.RemoveObject(ctx, s.bucket, key, minio.RemoveObjectOptions{}); err != nil {
		if errors.Is(s.mapErr("delete", key, err), objstore.ErrNotFound) {
			return nil
		}
		return s.mapErr("delete", key, err)
	}
	return nil
}

// Stat returns the object's size and modification time (HEAD).
func (s *Store) Stat(ctx context.Context, key string) (objstore.ObjectInfo, error) {
	if err := objstore.ValidateKey(key); err != nil {
		return objstore.ObjectInfo{}, err
	}
	o, err := s.c.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return objstore.ObjectInfo{}, s.mapErr("stat", key, err)
	}
	return objstore.ObjectInfo{Key: key, Size: o.Size, ModTime: o.LastModified}, nil
}
