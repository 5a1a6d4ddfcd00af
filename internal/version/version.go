// Package version reports the build's version and commit. Release builds set
// them with the linker (the Makefile does):
//
//	go build -ldflags "-X github.com/quiremq/quire/internal/version.Version=v0.1.0 \
//	    -X github.com/quiremq/quire/internal/version.Commit=abc1234" ./cmd/...
//
// Otherwise they come from the module and VCS information that the go command
// embeds (runtime/debug.ReadBuildInfo), and fall back to "dev" and "unknown".
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set by the linker with -X; empty in a plain `go build`.
var (
	Version string
	Commit  string
)

// Info describes the running binary.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"go_version"`
}

// Get returns the version information of the running binary.
func Get() Info {
	i := Info{Version: Version, Commit: Commit, GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if i.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			i.Version = bi.Main.Version
		}
		if i.Commit == "" {
			var rev, modified string
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					rev = s.Value
				case "vcs.modified":
					modified = s.Value
				}
			}
			if len(rev) > 12 {
				rev = rev[:12]
			}
			if rev != "" && modified == "true" {
				rev += "-dirty"
			}
			i.Commit = rev
		}
	}
	if i.Version == "" {
		i.Version = "dev"
	}
	if i.Commit == "" {
		i.Commit = "unknown"
	}
	return i
}

// String formats i as "v0.1.0 (commit abc1234, go1.26.0)".
func (i Info) String() string {
	return fmt.Sprintf("%s (commit %s, %s)", i.Version, i.Commit, i.GoVersion)
}
