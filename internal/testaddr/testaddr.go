// Package testaddr picks free addresses for tests that start servers
// (nodes, bookies, containers) on fixed addresses, possibly restarting them
// on the same address: Loopback for 127.0.0.1, Free and Ports for any host
// (Ports(t, "0.0.0.0", n) for ports Docker publishes).
package testaddr

import (
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// Loopback returns n distinct 127.0.0.1 addresses whose ports are free
// right now and lie below the kernel's ephemeral port range (Free on
// 127.0.0.1).
func Loopback(t testing.TB, n int) []string {
	t.Helper()
	return Free(t, "127.0.0.1", n)
}

// Free returns n distinct addresses "host:port" whose ports can be listened
// on at host right now and lie below the kernel's ephemeral port range. A
// port from that range (what listening on port 0 hands out) can become the
// local port of any process's outgoing connection as soon as it is
// released, and stay taken for that connection's life: a server restarted
// on its address then fails with "address already in use" (a bookie
// restart in the fault tests did), and a port published by Docker fails to
// bind. Below the range only a listener that asks for the port can take
// it. Host "0.0.0.0" checks every interface (and, where the system has
// IPv6, every IPv6 one too), as Docker publishes ports.
func Free(t testing.TB, host string, n int) []string {
	t.Helper()
	low := ephemeralLow()
	seen := map[int]bool{}
	var out []string
	for tries := 0; len(out) < n; tries++ {
		if tries == 100*n {
			t.Fatalf("testaddr: no %d free ports on %s in [%d, %d) after %d tries", n, host, minPort, low, tries)
		}
		port := minPort + rand.IntN(low-minPort)
		if seen[port] {
			continue
		}
		addr := net.JoinHostPort(host, strconv.Itoa(port))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue // taken
		}
		l.Close()
		seen[port] = true
		out = append(out, addr)
	}
	return out
}

// Ports returns the ports of n addresses from Free(t, host, n), as
// decimal strings.
func Ports(t testing.TB, host string, n int) []string {
	t.Helper()
	var ps []string
	for _, a := range Free(t, host, n) {
		_, p, _ := net.SplitHostPort(a)
		ps = append(ps, p)
	}
	return ps
}

// minPort is the lowest port Loopback picks: well above the well-known
// and common service ports.
const minPort = 10000

// ephemeralLow is the first port of the kernel's ephemeral range
// (/proc/sys/net/ipv4/ip_local_port_range on Linux), 32768 where it
// cannot be read.
func ephemeralLow() int {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > minPort+2000 {
				low = n
			}
		}
	}
	return low
}
