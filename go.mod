// The Go module of voxrelay's generated client code (gen/go) and its example
// (examples/go). Regenerate with `make generate`; see the README, "Calling from Go".
module github.com/voxrelay/voxrelay

go 1.19

require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
