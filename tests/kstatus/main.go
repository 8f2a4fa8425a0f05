// kstatus-check prints what kstatus, the library Flux's kustomize-controller and Helm's
// --wait use, makes of Kubernetes objects: one `kubectl get -o json` object (or a List) on
// stdin, one line per object on stdout: "<Kind>/<name> <Status> <message>".
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "kstatus-check: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("reading stdin: %v", err)
	}
	// The API machinery's own decoding, so that integers stay int64 as kstatus wants.
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(data, &probe); err != nil {
		fail("reading JSON from stdin: %v", err)
	}
	var items []unstructured.Unstructured
	if _, isList := probe["items"]; isList {
		list := &unstructured.UnstructuredList{}
		if err := list.UnmarshalJSON(data); err != nil {
			fail("reading a list from stdin: %v", err)
		}
		items = list.Items
	} else {
		object := &unstructured.Unstructured{}
		if err := object.UnmarshalJSON(data); err != nil {
			fail("reading an object from stdin: %v", err)
		}
		items = append(items, *object)
	}
	for i := range items {
		u := &items[i]
		result, err := status.Compute(u)
		if err != nil {
			fail("%s/%s: %v", u.GetKind(), u.GetName(), err)
		}
		fmt.Printf("%s/%s %s %s\n", u.GetKind(), u.GetName(), result.Status, result.Message)
	}
}
