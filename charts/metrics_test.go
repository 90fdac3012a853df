package charts

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	apilabels "k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// serviceMonitorCRD is prometheus-operator's CRD, copied from
// github.com/prometheus-operator/prometheus-operator@v0.83.0
// example/prometheus-operator-crd/ (Apache-2.0): the schema the API server
// checks a ServiceMonitor against.
const serviceMonitorCRD = "testdata/monitoring.coreos.com_servicemonitors.yaml"

// TestTemplateMetrics: the metrics flag, container port and scrape
// annotations in both roles, and the Services and ServiceMonitor, which
// select the pods' metrics ports.
func TestTemplateMetrics(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		args                   []string
		enabled, annotations   bool
		nodePort, ctrlPort     int32
		services, monitor      bool
		monitorInterval, label string
		host                   string
	}{
		{name: "defaults", enabled: true, annotations: true, nodePort: 9810, ctrlPort: 9811},
		{name: "disabled", args: []string{"--set", "metrics.enabled=false"}},
		{name: "loopback", args: []string{"--set", "metrics.node.host=127.0.0.1", "--set", "metrics.controller.host=127.0.0.1"}, enabled: true, annotations: true, nodePort: 9810, ctrlPort: 9811, host: "127.0.0.1"},
		{name: "service", args: []string{"--set", "metrics.service.enabled=true"}, enabled: true, annotations: true, nodePort: 9810, ctrlPort: 9811, services: true},
		{name: "servicemonitor", args: []string{"--set", "metrics.serviceMonitor.enabled=true"}, enabled: true, annotations: true,
			nodePort: 9810, ctrlPort: 9811, services: true, monitor: true, monitorInterval: "30s"},
		{name: "all options", args: []string{"-f", "testdata/all-options.yaml"}, enabled: true, nodePort: 19810, ctrlPort: 19811,
			services: true, monitor: true, monitorInterval: "1m", label: "prometheus"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := render(t, tc.args...)
			ds := nodeDaemonSet(t, objs)
			dep := one[*appsv1.Deployment](t, objs)
			pods := map[string]corev1.PodTemplateSpec{"node": ds.Spec.Template, "controller": dep.Spec.Template}
			ports := map[string]int32{"node": tc.nodePort, "controller": tc.ctrlPort}
			for role, pod := range pods {
				c := container(t, pod.Spec, "csi-rbdj")
				flag := fmt.Sprintf("--metrics-address=%s:%d", tc.host, ports[role])
				hasFlag := slices.ContainsFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--metrics-address") })
				if hasFlag != tc.enabled || tc.enabled && !slices.Contains(c.Args, flag) {
					t.Errorf("%s args %v: want %s: %v", role, c.Args, flag, tc.enabled)
				}
				want := []corev1.ContainerPort(nil)
				if tc.enabled {
					want = []corev1.ContainerPort{{Name: "metrics", ContainerPort: ports[role], Protocol: corev1.ProtocolTCP}}
				}
				if !slices.Equal(c.Ports, want) {
					t.Errorf("%s ports %v, want %v", role, c.Ports, want)
				}
				wantAnn := map[string]string(nil)
				if tc.annotations {
					wantAnn = map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": strconv.Itoa(int(ports[role])), "prometheus.io/path": "/metrics"}
				}
				if fmt.Sprint(pod.Annotations) != fmt.Sprint(wantAnn) {
					t.Errorf("%s pod annotations %v, want %v", role, pod.Annotations, wantAnn)
				}
			}

			svcs := find[*corev1.Service](objs)
			if got := len(svcs) > 0; got != tc.services {
				t.Fatalf("%d Services, want some: %v", len(svcs), tc.services)
			}
			for _, svc := range svcs {
				role := svc.Labels["app.kubernetes.io/component"]
				pod, ok := pods[role]
				if !ok {
					t.Fatalf("Service %s of unknown role %q", svc.Name, role)
				}
				if !apilabels.SelectorFromSet(svc.Spec.Selector).Matches(apilabels.Set(pod.Labels)) {
					t.Errorf("Service %s selector %v does not select the %s pods %v", svc.Name, svc.Spec.Selector, role, pod.Labels)
				}
				if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "metrics" || svc.Spec.Ports[0].Port != ports[role] ||
					svc.Spec.Ports[0].TargetPort.StrVal != "metrics" {
					t.Errorf("Service %s ports %+v", svc.Name, svc.Spec.Ports)
				}
			}

			sms := find[*monitoringv1.ServiceMonitor](objs)
			if got := len(sms) == 1; got != tc.monitor {
				t.Fatalf("%d ServiceMonitors, want one: %v", len(sms), tc.monitor)
			}
			if !tc.monitor {
				return
			}
			sm := sms[0]
			sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
			if err != nil {
				t.Fatal(err)
			}
			for _, svc := range svcs {
				if !sel.Matches(apilabels.Set(svc.Labels)) {
					t.Errorf("ServiceMonitor selector %v does not select Service %s %v", sel, svc.Name, svc.Labels)
				}
			}
			if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "metrics" || sm.Spec.Endpoints[0].Path != "/metrics" ||
				string(sm.Spec.Endpoints[0].Interval) != tc.monitorInterval {
				t.Errorf("ServiceMonitor endpoints %+v", sm.Spec.Endpoints)
			}
			if sm.Labels["release"] != tc.label {
				t.Errorf("ServiceMonitor labels %v, want release=%q", sm.Labels, tc.label)
			}
			// The rendered document, as the API server would check it.
			schema := loadCRDSchema(t)
			for _, doc := range renderDocs(t, tc.args...) {
				if doc["kind"] == "ServiceMonitor" {
					if err := validate(schema, doc, ""); err != nil {
						t.Errorf("ServiceMonitor does not match the CRD schema: %v", err)
					}
				}
			}
		})
	}
}

// TestMetricsSchemaRejects: bad metrics values fail before rendering.
func TestMetricsSchemaRejects(t *testing.T) {
	for _, args := range [][]string{
		{"--set", "metrics.node.port=0"},
		{"--set", "metrics.controller.port=70000"},
		{"--set", "metrics.serviceMonitor.interval=soon"},
		{"--set", "metrics.bogus=1"},
		{"--set", "metrics.enabled=false", "--set", "metrics.serviceMonitor.enabled=true"},
	} {
		if _, err := helm(t, append([]string{"template", "rbdj", chartDir, "--kube-version", kubeVersion}, args...)...); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

// TestCRDValidator: the schema check rejects what the API server would.
func TestCRDValidator(t *testing.T) {
	schema := loadCRDSchema(t)
	base := `
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: x}
spec:
  selector: {matchLabels: {a: b}}
  endpoints: [{port: metrics, interval: 30s}]
`
	for _, tc := range []struct {
		name, doc string
		ok        bool
	}{
		{"valid", base, true},
		{"bad interval", strings.Replace(base, "interval: 30s", "interval: 30 seconds", 1), false},
		{"unknown field", strings.Replace(base, "port: metrics", "port: metrics, bogus: 1", 1), false},
		{"bad scheme", strings.Replace(base, "port: metrics", "port: metrics, scheme: ftp", 1), false},
		{"no selector", strings.Replace(base, "selector: {matchLabels: {a: b}}", "jobLabel: x", 1), false},
		{"int target port", strings.Replace(base, "port: metrics", "targetPort: 9810", 1), true},
	} {
		var doc map[string]any
		if err := yaml.Unmarshal([]byte(tc.doc), &doc); err != nil {
			t.Fatal(err)
		}
		err := validate(schema, doc, "")
		if (err == nil) != tc.ok {
			t.Errorf("%s: validate = %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}

// renderDocs renders the chart and returns every document as plain YAML
// data.
func renderDocs(t *testing.T, args ...string) []map[string]any {
	t.Helper()
	var docs []map[string]any
	for _, doc := range renderYAML(t, args...) {
		var m map[string]any
		if err := yaml.Unmarshal(doc, &m); err != nil {
			t.Fatal(err)
		}
		docs = append(docs, m)
	}
	return docs
}

// loadCRDSchema returns the v1 openAPIV3Schema of the ServiceMonitor CRD.
func loadCRDSchema(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile(serviceMonitorCRD)
	if err != nil {
		t.Fatal(err)
	}
	var crd struct {
		Spec struct {
			Versions []struct {
				Name   string `json:"name"`
				Schema struct {
					OpenAPIV3Schema map[string]any `json:"openAPIV3Schema"`
				} `json:"schema"`
			} `json:"versions"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(b, &crd); err != nil {
		t.Fatal(err)
	}
	for _, v := range crd.Spec.Versions {
		if v.Name == "v1" {
			return v.Schema.OpenAPIV3Schema
		}
	}
	t.Fatal("no v1 schema in the ServiceMonitor CRD")
	return nil
}

// validate checks v against a CRD's structural schema the way the API
// server does for what the chart renders: types, required fields, enums,
// patterns, bounds, int-or-string; and, stricter than the server (which
// prunes them), unknown fields are errors.
func validate(s map[string]any, v any, path string) error {
	if path == "" {
		path = "."
	}
	if b, _ := s["x-kubernetes-int-or-string"].(bool); b {
		switch v.(type) {
		case string, float64, int64:
			return nil
		}
		return fmt.Errorf("%s: %v is neither an integer nor a string", path, v)
	}
	if alts, ok := s["anyOf"].([]any); ok && s["type"] == nil {
		var errs []error
		for _, alt := range alts {
			if err := validate(alt.(map[string]any), v, path); err == nil {
				return nil
			} else {
				errs = append(errs, err)
			}
		}
		return fmt.Errorf("%s: no alternative matches: %w", path, errors.Join(errs...))
	}
	if enum, ok := s["enum"].([]any); ok && !slices.ContainsFunc(enum, func(e any) bool { return fmt.Sprint(e) == fmt.Sprint(v) }) {
		return fmt.Errorf("%s: %v not in %v", path, v, enum)
	}
	switch s["type"] {
	case "object":
		m, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: %T, want an object", path, v)
		}
		props, _ := s["properties"].(map[string]any)
		for _, r := range asSlice(s["required"]) {
			if _, ok := m[r.(string)]; !ok {
				return fmt.Errorf("%s: required field %q missing", path, r)
			}
		}
		for k, fv := range m {
			var fs map[string]any
			switch {
			case props != nil && props[k] != nil:
				fs = props[k].(map[string]any)
			case s["additionalProperties"] != nil:
				ap, ok := s["additionalProperties"].(map[string]any)
				if !ok {
					continue
				}
				fs = ap
			case props == nil:
				continue // free-form (metadata, preserve-unknown-fields)
			default:
				return fmt.Errorf("%s: unknown field %q", path, k)
			}
			if err := validate(fs, fv, strings.TrimSuffix(path, ".")+"."+k); err != nil {
				return err
			}
		}
	case "array":
		a, ok := v.([]any)
		if !ok {
			return fmt.Errorf("%s: %T, want an array", path, v)
		}
		items, _ := s["items"].(map[string]any)
		for i, e := range a {
			if items != nil {
				if err := validate(items, e, fmt.Sprintf("%s[%d]", path, i)); err != nil {
					return err
				}
			}
		}
	case "string":
		str, ok := v.(string)
		if !ok {
			return fmt.Errorf("%s: %T %v, want a string", path, v, v)
		}
		if p, ok := s["pattern"].(string); ok && !regexp.MustCompile(p).MatchString(str) {
			return fmt.Errorf("%s: %q does not match %s", path, str, p)
		}
		if n, ok := s["minLength"].(float64); ok && float64(len(str)) < n {
			return fmt.Errorf("%s: %q shorter than %v", path, str, n)
		}
	case "integer":
		f, ok := v.(float64)
		if !ok || f != float64(int64(f)) {
			return fmt.Errorf("%s: %v, want an integer", path, v)
		}
		if n, ok := s["minimum"].(float64); ok && f < n {
			return fmt.Errorf("%s: %v below %v", path, f, n)
		}
		if n, ok := s["maximum"].(float64); ok && f > n {
			return fmt.Errorf("%s: %v above %v", path, f, n)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("%s: %T, want a boolean", path, v)
		}
	}
	return nil
}

func asSlice(v any) []any {
	s, _ := v.([]any)
	return s
}
