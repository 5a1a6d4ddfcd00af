package bookierpc

import "testing"

// The pool hands out buffers of the asked length from the smallest tier
// that holds it, takes back only buffers of a tier's exact capacity, and
// reuses them without clearing.
func TestDirtyPool(t *testing.T) {
	p := new(dirtyPool)
	for _, c := range []struct{ n, cap int }{{0, 256}, {1, 256}, {256, 256}, {257, 512}, {32<<10 + 1, 64 << 10},
		{8 << 20, 8 << 20}, {8<<20 + 1, 8<<20 + 1}} {
		b := p.Get(c.n)
		if len(*b) != c.n || cap(*b) != c.cap {
			t.Errorf("Get(%d): len %d cap %d, want %d %d", c.n, len(*b), cap(*b), c.n, c.cap)
		}
		p.Put(b)
	}
	// sync.Pool may drop what is put (it does at random under -race):
	// try a few times.
	for range 100 {
		b := p.Get(1000)
		for i := range *b {
			(*b)[i] = 7
		}
		p.Put(b)
		p.Put(&[]byte{1, 2, 3}) // not a tier's capacity: dropped
		if c := p.Get(600); cap(*c) != 1024 || len(*c) != 600 {
			t.Fatalf("Get(600): len %d cap %d", len(*c), cap(*c))
		} else if (*c)[0] == 7 {
			return // the buffer came back as it was left
		}
	}
	t.Error("a buffer put back was never handed out again")
}
