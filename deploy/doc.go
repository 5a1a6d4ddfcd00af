// Package deploy holds Quire's container images and docker-compose files,
// and the test that runs them (compose_test.go): it builds the images the
// way `make images` does — FROM scratch, from static binaries built on the
// host, MinIO from the `go install`ed binary — brings up docker-compose.yml
// (MinIO and a three-node cluster) on free host ports, checks the cluster,
// writes and reads through MQTT, and tears everything down.
package deploy
