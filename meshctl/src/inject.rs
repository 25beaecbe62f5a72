//! `meshctl inject`: offline injection with the webhook's own code.

use crate::cli::{InjectArgs, Output};
use crate::{load_rollouts, print_json, read_input};
use serde_json::json;
use std::process::ExitCode;
use webhook::inject::InjectorConfig;
use webhook::offline::{self, OfflineOptions};

pub fn inject(args: &InjectArgs, output: Output) -> anyhow::Result<ExitCode> {
    let r = load_rollouts(&args.rollouts)?;
    let text = read_input(&args.file)?;
    let opts = OfflineOptions { default_namespace: args.namespace.clone(), namespace_pin: args.namespace_pin.clone() };
    let injected = offline::inject_yaml(&text, &r, &InjectorConfig::default(), &opts).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    match output {
        Output::Json => print_json(&json!({"objects": injected.objects, "reports": injected.reports}))?,
        Output::Text | Output::Yaml => {
            print!("{}", injected.text);
            // The notes go to stderr, so `meshctl inject ... | kubectl apply -f -` stays clean.
            for r in &injected.reports {
                let version = r.version.as_deref().map(|v| format!(" {v}")).unwrap_or_default();
                let detail = r.detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default();
                eprintln!("{}: {}{version}{detail}", r.object, r.result);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
