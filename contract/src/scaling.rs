//! A function's `scaling` and the operator's bounds on it.

use serde::{Deserialize, Serialize};

use crate::tensor::Violation;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScalingPolicy {
    pub min_instances: u32,
    pub max_instances: u32,
    pub concurrency: u32,
    pub idle_timeout_s: u64,
}

impl Default for ScalingPolicy {
    fn default() -> Self {
        ScalingPolicy {
            min_instances: 0,
            max_instances: 4,
            concurrency: 8,
            idle_timeout_s: 300,
        }
    }
}

/// The most any tenant's function may ask for in `scaling`: set by the
/// operator (`[scaling_bounds]` in `taskmesh.toml`), checked at registration
/// (422 with a pointer to the field). A tenant admin cannot reserve more warm
/// instances, scale wider or accept more concurrent calls per instance than
/// this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScalingBounds {
    pub min_instances: u32,
    pub max_instances: u32,
    pub concurrency: u32,
}

impl Default for ScalingBounds {
    fn default() -> Self {
        ScalingBounds {
            min_instances: 8,
            max_instances: 64,
            concurrency: 1024,
        }
    }
}

impl ScalingBounds {
    /// The fields of `scaling` over these bounds.
    pub fn check(&self, scaling: &ScalingPolicy) -> Vec<Violation> {
        [
            ("min_instances", scaling.min_instances, self.min_instances),
            ("max_instances", scaling.max_instances, self.max_instances),
            ("concurrency", scaling.concurrency, self.concurrency),
        ]
        .into_iter()
        .filter(|(_, asked, most)| asked > most)
        .map(|(field, asked, most)| {
            Violation::new(
                format!("/scaling/{field}"),
                format!("{field} {asked} is over this platform's bound of {most} (the operator's scaling_bounds)"),
            )
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_over_the_bounds_names_each_field() {
        let bounds = ScalingBounds::default();
        assert!(bounds.check(&ScalingPolicy::default()).is_empty());
        let greedy = ScalingPolicy {
            min_instances: 9,
            max_instances: 65,
            concurrency: 1025,
            idle_timeout_s: 300,
        };
        let pointers: Vec<_> = bounds
            .check(&greedy)
            .into_iter()
            .map(|v| v.pointer)
            .collect();
        assert_eq!(
            pointers,
            [
                "/scaling/min_instances",
                "/scaling/max_instances",
                "/scaling/concurrency"
            ]
        );
    }
}
