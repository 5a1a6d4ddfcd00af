package file_test

import (
	"testing"

	"github.com/quiremq/quire/engines/file"
	"github.com/quiremq/quire/engines/file/manifesttest"
	"github.com/quiremq/quire/engines/s3/enginetest"
	"github.com/quiremq/quire/internal/vfs"
)

func TestFileManifest(t *testing.T) {
	manifesttest.Run(t, func(*testing.T) file.Manifest { return file.NewFileManifest(vfs.NewMem(), "/d") })
}

func TestFileManifestDamaged(t *testing.T) {
	fs := vfs.NewMem()
	m := file.NewFileManifest(fs, "/d")
	if err := m.CAS(t.Context(), "a", 0, nil, &file.RemoteSegment{Key: "k"}); err != nil {
		t.Fatal(err)
	}
	p := "/d/s-a/OFFLOAD"
	b, err := vfs.ReadFile(fs, p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-2] ^= 1
	if err := vfs.WriteFileAtomic(fs, p, b); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Load(t.Context(), "a"); err == nil {
		t.Fatal("Load of a damaged manifest succeeded")
	}
}

func TestMetaManifest(t *testing.T) {
	kv := enginetest.NewMeta(t)
	n := 0
	manifesttest.Run(t, func(*testing.T) file.Manifest {
		n++ // a fresh key space per subtest
		return file.MetaManifest{KV: kv, Prefix: "/offload/file/test" + string(rune('a'+n)) + "/"}
	})
}
