// Package tools holds code generation and developer scripts. Nothing here is
// linked into the quire binaries.
package tools
