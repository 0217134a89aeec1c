// dashboard-lint checks Grafana dashboard JSON files: against Grafana's own dashboard schema (the typed
// models of grafana-foundation-sdk, decoded strictly: an unknown or mistyped field is an error), and by
// the rules of grafana/dashboard-linter, which the Go module proxy does not serve (and which now
// depends on AGPL modules). Every finding is an error; it exits 1 when there is one.
//
// Usage: dashboard-lint FILE.json...
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/units"
)

// The units a panel may name: the SDK's constants, so a typo is caught.
var knownUnits = map[string]bool{
	units.Short: true, units.NoUnit: true, units.Percent: true, units.PercentUnit: true,
	units.Seconds: true, units.CountsPerSecond: true, units.OpsPerSecond: true,
	units.BytesPerSecondSI: true, units.BytesIEC: true, units.BytesSI: true,
}

var (
	// A range function over a counter must use $__rate_interval (target-rate-interval-rule).
	rangeCall = regexp.MustCompile(`\b(rate|irate|increase)\s*\(([^\[]*)\[([^\]]*)\]`)
	// A counter (target-counter-agg-rule): only ever read through rate, irate or increase.
	counter     = regexp.MustCompile(`\b[a-zA-Z_:][a-zA-Z0-9_:]*_(total|bucket)\b`)
	counterRead = regexp.MustCompile(`\b(rate|irate|increase)\s*\(\s*$`)
	datasource  = map[string]bool{"${datasource}": true, "$datasource": true}
)

type object = map[string]any

// isError: the SDK returns its error list as an error even when the list is empty.
func isError(err error) bool {
	var list cog.BuildErrors
	if errors.As(err, &list) {
		return len(list) > 0
	}
	return err != nil
}

type linter struct {
	file     string
	findings []string
}

func (l *linter) report(rule, where, format string, args ...any) {
	l.findings = append(l.findings, fmt.Sprintf("[error] %s: %s: %s: %s", l.file, rule, where, fmt.Sprintf(format, args...)))
}

func str(o object, key string) string { s, _ := o[key].(string); return s }

func uid(v any) string {
	switch ds := v.(type) {
	case string:
		return ds
	case object:
		return str(ds, "uid")
	}
	return ""
}

func list(v any) []object {
	items, _ := v.([]any)
	out := make([]object, 0, len(items))
	for _, item := range items {
		if o, ok := item.(object); ok {
			out = append(out, o)
		}
	}
	return out
}

func (l *linter) lint(raw []byte) {
	var typed dashboard.Dashboard
	if err := typed.UnmarshalJSONStrict(raw); isError(err) {
		l.report("schema", "dashboard", "%v", err)
	} else if err := typed.Validate(); isError(err) {
		l.report("schema", "dashboard", "%v", err)
	}
	var d object
	if err := json.Unmarshal(raw, &d); err != nil {
		l.report("schema", "dashboard", "%v", err)
		return
	}
	if str(d, "uid") == "" || str(d, "title") == "" {
		l.report("dashboard-uid-title-rule", "dashboard", "needs a uid and a title")
	}
	l.templating(d)
	var panels []object
	for _, p := range list(d["panels"]) {
		panels = append(panels, p)
		panels = append(panels, list(p["panels"])...) // a collapsed row keeps its panels
	}
	ids, titles := map[float64]bool{}, map[string]bool{}
	var placed []titled
	for _, p := range panels {
		where := fmt.Sprintf("panel %q", str(p, "title"))
		if id, _ := p["id"].(float64); ids[id] {
			l.report("panel-id-rule", where, "id %v is not unique", id)
		} else {
			ids[id] = true
		}
		if r, ok := rectOf(p); ok {
			if r.x+r.w > 24 {
				l.report("panel-grid-rule", where, "x+w is %v, past the 24 columns", r.x+r.w)
			}
			for _, other := range placed {
				if r.overlaps(other.rect) {
					l.report("panel-grid-rule", where, "overlaps panel %q", other.title)
				}
			}
			placed = append(placed, titled{r, str(p, "title")})
		}
		if str(p, "type") == "row" {
			continue
		}
		if str(p, "title") == "" || str(p, "description") == "" {
			l.report("panel-title-description-rule", where, "needs a title and a description")
		}
		if titles[str(p, "title")] {
			l.report("panel-title-description-rule", where, "the title is not unique")
		}
		titles[str(p, "title")] = true
		if !datasource[uid(p["datasource"])] {
			l.report("panel-datasource-rule", where, "datasource %q is not the ${datasource} variable", uid(p["datasource"]))
		}
		l.unit(p, where)
		l.targets(p, where)
	}
}

type rect struct{ x, y, w, h float64 }

type titled struct {
	rect
	title string
}

func (r rect) overlaps(o rect) bool {
	return r.x < o.x+o.w && o.x < r.x+r.w && r.y < o.y+o.h && o.y < r.y+r.h
}

func rectOf(p object) (rect, bool) {
	grid, ok := p["gridPos"].(object)
	if !ok {
		return rect{}, false
	}
	n := func(k string) float64 { v, _ := grid[k].(float64); return v }
	return rect{n("x"), n("y"), n("w"), n("h")}, true
}

func (l *linter) templating(d object) {
	vars := list(func() any { t, _ := d["templating"].(object); return t["list"] }())
	found := false
	for _, v := range vars {
		where := fmt.Sprintf("variable %q", str(v, "name"))
		switch str(v, "type") {
		case "datasource":
			if str(v, "name") == "datasource" && str(v, "query") == "prometheus" {
				found = true
			}
		case "query":
			if !datasource[uid(v["datasource"])] {
				l.report("template-datasource-rule", where, "queries datasource %q, not ${datasource}", uid(v["datasource"]))
			}
			if !strings.HasPrefix(fmt.Sprint(func() any { q, _ := v["query"].(object); return q["query"] }()), "label_values(") {
				l.report("template-label-promql-rule", where, "its query is not label_values(...)")
			}
		}
	}
	if !found {
		l.report("template-datasource-rule", "templating", "no Prometheus datasource variable named \"datasource\"")
	}
}

func (l *linter) unit(p object, where string) {
	switch str(p, "type") {
	case "timeseries", "stat", "gauge", "bargauge":
	default:
		return
	}
	fc, _ := p["fieldConfig"].(object)
	defaults, _ := fc["defaults"].(object)
	if unit := str(defaults, "unit"); !knownUnits[unit] {
		l.report("panel-units-rule", where, "unit %q is missing or unknown", unit)
	}
}

func (l *linter) targets(p object, where string) {
	targets := list(p["targets"])
	if len(targets) == 0 {
		l.report("panel-no-targets-rule", where, "has no query")
	}
	refs := map[string]bool{}
	for _, t := range targets {
		at := fmt.Sprintf("%s target %s", where, str(t, "refId"))
		if refs[str(t, "refId")] || str(t, "refId") == "" {
			l.report("target-refid-rule", at, "refId missing or not unique")
		}
		refs[str(t, "refId")] = true
		if ds, ok := t["datasource"]; ok && !datasource[uid(ds)] {
			l.report("panel-datasource-rule", at, "datasource %q is not ${datasource}", uid(ds))
		}
		expr := str(t, "expr")
		if strings.TrimSpace(expr) == "" {
			l.report("panel-no-targets-rule", at, "empty expr")
		}
		for _, m := range rangeCall.FindAllStringSubmatch(expr, -1) {
			if m[3] != "$__rate_interval" {
				l.report("target-rate-interval-rule", at, "%s(...[%s]) should use [$__rate_interval]", m[1], m[3])
			}
		}
		for _, loc := range counter.FindAllStringIndex(expr, -1) {
			if !counterRead.MatchString(expr[:loc[0]]) {
				l.report("target-counter-agg-rule", at, "counter %s read without rate, irate or increase", expr[loc[0]:loc[1]])
			}
		}
	}
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dashboard-lint FILE.json...")
		os.Exit(2)
	}
	plugins.RegisterDefaultPlugins()
	failed := false
	for _, file := range os.Args[1:] {
		raw, err := os.ReadFile(file)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		l := &linter{file: file}
		l.lint(raw)
		for _, f := range l.findings {
			fmt.Println(f)
		}
		failed = failed || len(l.findings) > 0
	}
	if failed {
		os.Exit(1)
	}
}
