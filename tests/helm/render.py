#!/usr/bin/env python3
"""Lint and render a chart with the real Helm library (helm-python-sdk, Helm v4),
like `helm lint` + `helm template`, and print the manifests as one YAML stream.

    render.py CHART --name RELEASE --namespace NS [--set k=v ...] [--set-file k=PATH ...]
              [--kubeconfig PATH]

With --kubeconfig the render is cluster-aware, like `helm install --dry-run=server`:
`lookup` sees live objects and .Capabilities describe that API server.

Exits 1 with Helm's messages when lint reports an error or rendering fails.
"""
import argparse
import sys

try:
    import helm_python as helm
except ImportError:
    sys.exit("helm-python-sdk is not installed: pip install helm-python-sdk")


def merge(into, more):
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("chart")
    p.add_argument("--name", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--set", action="append", default=[], dest="sets")
    p.add_argument("--set-file", action="append", default=[], dest="set_files")
    p.add_argument("--kubeconfig")
    args = p.parse_args()

    helm.disable_logging()
    values = {}
    try:
        for s in args.sets:
            merge(values, helm.parse_set_string(s))
        for s in args.set_files:
            merge(values, helm.parse_set_file(s))
        helm.validate_release_name(args.name)
        chart = helm.Chart.load(args.chart)
        if args.kubeconfig:
            config = helm.Config(kubeconfig_path=args.kubeconfig, namespace=args.namespace)
            rendered = config.render(chart, values, name=args.name, namespace=args.namespace, is_install=True)
        else:
            rendered = chart.render(values, name=args.name, namespace=args.namespace, is_install=True)
        crds = chart.crds
        report = helm.lint(args.chart, values, namespace=args.namespace, strict=True)
        problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        for m in problems:
            print(f"lint: {m.get('path')}: {m.get('error')}", file=sys.stderr)
        for e in report.get("errors", []) or []:
            print(f"lint: {e}", file=sys.stderr)
        if problems or report.get("errors"):
            return 1
    except helm.HelmError as e:
        print(f"helm: {e}", file=sys.stderr)
        return 1
    docs = [c["data"] for c in crds]
    docs += [rendered[path] for path in sorted(rendered) if path.endswith((".yaml", ".yml")) and rendered[path].strip()]
    for doc in docs:
        text = doc.strip()
        if not text.startswith("---"):
            print("---")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
