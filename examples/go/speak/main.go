// Command speak sends two turns to a voxrelay server over the Stream rpc and
// prints the ordered responses, one line each, then the voice that spoke.
//
//	go run ./examples/go/speak -target 127.0.0.1:50051 -language de
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	voxrelayv1 "github.com/voxrelay/voxrelay/gen/go/voxrelay/v1"
)

func main() {
	target := flag.String("target", "127.0.0.1:50051", "host:port of the voxrelay server")
	voice := flag.String("voice", "", "voice name; empty: the language's or the server's default")
	language := flag.String("language", "", "BCP-47 language tag, e.g. de or en-GB")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Plaintext, as the server listens on loopback by default; use
	// grpc.WithTransportCredentials(credentials.NewClientTLSFromFile(...)) for TLS.
	conn, err := grpc.DialContext(ctx, *target, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		log.Fatalf("cannot reach %s: %v", *target, err)
	}
	defer conn.Close()

	stream, err := voxrelayv1.NewSpeechClient(conn).Stream(ctx)
	if err != nil {
		log.Fatalf("Stream: %v", err)
	}
	requests := []*voxrelayv1.StreamRequest{
		{Request: &voxrelayv1.StreamRequest_Config{Config: &voxrelayv1.SessionConfig{
			Voice:        *voice,
			LanguageCode: *language,
			AudioFormat:  &voxrelayv1.AudioFormat{Encoding: voxrelayv1.AudioEncoding_AUDIO_ENCODING_PCM_S16LE},
		}}},
		{Request: &voxrelayv1.StreamRequest_Text{Text: "Hello there, how are you today? "}},
		{Request: &voxrelayv1.StreamRequest_TurnDone{TurnDone: &voxrelayv1.TurnDone{}}},
		{Request: &voxrelayv1.StreamRequest_Text{Text: "This is the second turn. "}},
	}
	for _, request := range requests {
		if err := stream.Send(request); err != nil {
			break // the call ended: Recv below returns its status
		}
	}
	// Half-close: the server speaks both turns, then ends the session.
	if err := stream.CloseSend(); err != nil {
		log.Fatalf("CloseSend: %v", err)
	}

	samples := 0
	for {
		response, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			st := status.Convert(err)
			fmt.Fprintf(os.Stderr, "voxrelay: %s: %s\n", st.Code(), st.Message())
			os.Exit(1)
		}
		switch r := response.Response.(type) {
		case *voxrelayv1.StreamResponse_Audio:
			// uint64 fields (Turn, OffsetSamples) are Go uint64s: no precision trap here.
			samples += len(r.Audio.Data) / 2
			fmt.Printf("audio turn=%d segment=%d offset=%d bytes=%d rate=%d\n",
				r.Audio.Turn, r.Audio.Segment, r.Audio.OffsetSamples, len(r.Audio.Data), r.Audio.SampleRateHz)
		case *voxrelayv1.StreamResponse_Lifecycle:
			fmt.Printf("lifecycle %s turn=%d cancelled=%t\n",
				r.Lifecycle.Event, r.Lifecycle.Turn, r.Lifecycle.Cancelled)
		case *voxrelayv1.StreamResponse_Error:
			fmt.Printf("error code=%d %s\n", r.Error.Code, r.Error.Message)
		}
	}
	// The server names the voice it chose in the call's initial metadata.
	header, _ := stream.Header()
	voiceName := ""
	if names := header.Get("voxrelay-voice"); len(names) > 0 {
		voiceName = names[0]
	}
	fmt.Printf("voice=%s samples=%d\n", voiceName, samples)
}
