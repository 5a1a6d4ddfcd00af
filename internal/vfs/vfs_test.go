package vfs

import "testing"

// MkdirAll's directories survive a crash; plain fs.MkdirAll's do not.
func TestMkdirAllDurable(t *testing.T) {
	fs := NewCrashableMem()
	if err := fs.MkdirAll("/plain/x", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := MkdirAll(fs, "/a/b/c"); err != nil {
		t.Fatal(err)
	}
	if err := MkdirAll(fs, "/a/b/c"); err != nil { // exists: no-op
		t.Fatal(err)
	}
	after := fs.CrashClone(CrashCloneCfg{})
	if _, err := after.Stat("/a/b/c"); err != nil {
		t.Fatalf("durable directory lost in a crash: %v", err)
	}
	if _, err := after.Stat("/plain/x"); !IsNotExist(err) {
		t.Fatalf("the crash kept an unsynced directory (%v): the test proves nothing", err)
	}
}
