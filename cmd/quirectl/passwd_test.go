package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/quiremq/quire/frontends/auth"
	"github.com/quiremq/quire/internal/config"
)

// TestPasswd: the printed entry, appended to a config file, loads and holds
// a bcrypt hash of the password read from stdin.
func TestPasswd(t *testing.T) {
	stdin = strings.NewReader("wonderland\n")
	defer func() { stdin = os.Stdin }()
	var out, errb bytes.Buffer
	if code := run([]string{"passwd", "alice"}, &out, &errb); code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	path := filepath.Join(t.TempDir(), "quire.toml")
	if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path, config.Overrides{})
	if err != nil {
		t.Fatalf("the printed entry does not load: %v\n%s", err, out.String())
	}
	if len(cfg.MQTT.Users) != 1 || cfg.MQTT.Users[0].Name != "alice" ||
		bcrypt.CompareHashAndPassword([]byte(cfg.MQTT.Users[0].PasswordHash), []byte("wonderland")) != nil {
		t.Fatalf("entry %+v does not hash the password", cfg.MQTT.Users)
	}
	// The SCRAM credentials authenticate the same password.
	sc, err := auth.NewSCRAM(map[string]string{"alice": cfg.MQTT.Users[0].SCRAMSHA256})
	if err != nil {
		t.Fatal(err)
	}
	cl := &auth.SCRAMClient{User: "alice", Password: "wonderland"}
	x, first, err := sc.Start(cl.First())
	if err != nil {
		t.Fatal(err)
	}
	final, err := cl.Final(first)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := x.Finish(final); err != nil {
		t.Fatalf("SCRAM with the printed credentials: %v", err)
	}
	for _, args := range [][]string{{"passwd"}, {"passwd", "a", "b"}} {
		stdin = strings.NewReader("pw\n")
		if code := run(args, &out, &errb); code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, exitUsage)
		}
	}
	stdin = strings.NewReader("")
	if code := run([]string{"passwd", "bob"}, &out, &errb); code != exitUsage {
		t.Errorf("empty password: exit %d", code)
	}
}
