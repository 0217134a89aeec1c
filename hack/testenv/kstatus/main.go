// kstatus prints what kstatus (sigs.k8s.io/cli-utils, the status library of Flux, kpt and
// `kubectl wait`-like tools) computes for each object given: one JSON line {"status", "message"} per
// file argument, or per object in "-" (stdin, JSON or YAML).
//
// The tests run it on real objects the operator wrote (tests/integration/test_kstatus.py).
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type answer struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func compute(raw []byte) (answer, error) {
	// Through JSON into Unstructured, as a client reads objects from the API server: integers stay
	// int64 (kstatus refuses a float generation).
	data, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return answer{}, fmt.Errorf("not a YAML or JSON object: %w", err)
	}
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(data); err != nil {
		return answer{}, fmt.Errorf("not a Kubernetes object: %w", err)
	}
	res, err := status.Compute(obj)
	if err != nil {
		return answer{}, err
	}
	return answer{Status: res.Status.String(), Message: res.Message}, nil
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kstatus OBJ.yaml|- ...")
		os.Exit(2)
	}
	for _, path := range os.Args[1:] {
		var raw []byte
		var err error
		if path == "-" {
			raw, err = io.ReadAll(os.Stdin)
		} else {
			raw, err = os.ReadFile(path)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		got, err := compute(raw)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			os.Exit(1)
		}
		line, _ := json.Marshal(got)
		fmt.Println(string(line))
	}
}
