// Test tooling only: kstatus's reading of Kubernetes objects, as Flux
// (kustomize-controller's wait and healthChecks), kpt and cli-utils' own
// appliers compute it, with the real library: status.Compute of
// sigs.k8s.io/cli-utils/pkg/kstatus/status.
//
// Reads JSON or YAML on stdin: one object, several YAML documents, or a List
// (kind ending in "List" with items). Prints one JSON line per object:
//
//	{"name":"research/semis-q3","status":"Current","message":"Resource is Ready"}
//
// status is one of InProgress, Current, Failed, Terminating (kstatus's
// statuses). An object kstatus cannot read is an error: exit 1.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type reading struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: kstatus < objects.{json,yaml}  (one JSON line per object on stdout)")
		os.Exit(2)
	}
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	decoder := yaml.NewYAMLOrJSONDecoder(bufio.NewReader(in), 4096)
	encoder := json.NewEncoder(out)
	seen := 0
	for {
		var raw json.RawMessage
		if err := decoder.Decode(&raw); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fmt.Errorf("decoding object %d: %w", seen+1, err)
		}
		if len(bytes.TrimSpace(raw)) == 0 {
			continue // an empty YAML document
		}
		// As client-go decodes an object: whole numbers become int64, which kstatus's field accessors expect.
		var doc map[string]any
		if err := utiljson.Unmarshal(raw, &doc); err != nil {
			return fmt.Errorf("decoding object %d: %w", seen+1, err)
		}
		if doc == nil {
			continue // a YAML document holding only null
		}
		objects := []map[string]any{doc}
		if kind, _ := doc["kind"].(string); strings.HasSuffix(kind, "List") {
			objects = objects[:0]
			items, _ := doc["items"].([]any)
			for i, item := range items {
				object, ok := item.(map[string]any)
				if !ok {
					return fmt.Errorf("%s item %d is not an object", kind, i)
				}
				objects = append(objects, object)
			}
		}
		for _, object := range objects {
			seen++
			u := &unstructured.Unstructured{Object: object}
			result, err := status.Compute(u)
			if err != nil {
				return fmt.Errorf("%s %s: %w", u.GetKind(), name(u), err)
			}
			if err := encoder.Encode(reading{name(u), string(result.Status), result.Message}); err != nil {
				return err
			}
		}
	}
	if seen == 0 {
		return errors.New("no object on stdin")
	}
	return nil
}

func name(u *unstructured.Unstructured) string {
	if u.GetNamespace() == "" {
		return u.GetName()
	}
	return u.GetNamespace() + "/" + u.GetName()
}
