package schema

import (
	"context"

	"github.com/quiremq/quire/meta"
)

// ListValues is List without the versions and the revision: the decoded
// values under prefix, in key order (a linearizable read), for callers
// that only load records (offload manifests).
func ListValues[T any](ctx context.Context, kv meta.KV, prefix string) ([]T, error) {
	rs, _, err := List[T](ctx, kv, prefix, false)
	if err != nil {
		return nil, err
	}
	out := make([]T, len(rs))
	for i, r := range rs {
		out[i] = r.Value
	}
	return out, nil
}
