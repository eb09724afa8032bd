//! Names of an application's children, and the label value that selects a model's pods.
//!
//! A model's objects are `<app>--<slug>` and the router's are `<app>-router`, Cloud Run's double
//! hyphen as the separator. They cannot collide, by construction:
//!
//! - the application name is a DNS-1035 label without `--` (the CRD's CEL rules, and
//!   `validate.rs` for objects stored before those rules), and a [`slug`] is a non-empty run of
//!   `[a-z0-9]` parts joined by single hyphens, so in `<app>--<slug>` the first `--` is exactly the
//!   separator: the name gives back its app and slug, and distinct (app, slug) pairs get distinct
//!   names, across applications too (`a` + `b-c` is `a--b-c`, `a-b` + `c` is `a-b--c`);
//! - `<app>-router` has no `--` at all, so it is never a model's name (`x` + `y-router` is
//!   `x--y-router`, the router of `x-y` is `x-y-router`);
//! - a name longer than the 63 characters of a DNS-1035 label (or one with an empty slug, which
//!   `validate.rs` refuses anyway) is cut and ends in `---` and 10 hex digits of the FNV-1a hash of
//!   the full name. No full name has `---`, so a shortened name never equals a full one; two
//!   shortened names meet only if 40 bits of their hashes do. That is unlikely by chance but can be
//!   built on purpose, and then the ownership check refuses to take the object over
//!   (`NameConflict`) and `validate.rs` refuses two models of one application with one name.
//!
//! The model-id label is the id with characters labels refuse turned into `_`; an id that would
//! not make a valid label value (over 63 characters, or ending in `.`, `-` or `_`) is cut and ends
//! in `-` and a hash of the exact id. `validate.rs` refuses two models of one application whose
//! label values meet, since the label is what tells their pods apart.

use crate::text::truncate;

/// Longest DNS-1035 label (Service names) and longest label value.
pub const MAX_NAME_LEN: usize = 63;
/// Hex digits of the hash that ends a shortened name (40 bits).
const HASH_HEX: usize = 10;
/// What separates a shortened name's head from its hash; no full name contains it.
const SHORTENED: &str = "---";

/// The name every object of the model with `model_id` in application `app_name` gets:
/// `<app>--<slug of modelId>`, shortened with a hash past 63 characters.
pub fn model_object_name(app_name: &str, model_id: &str) -> String {
    let slug = slug(model_id);
    let full = format!("{app_name}--{slug}");
    if slug.is_empty() || full.len() > MAX_NAME_LEN { shortened(&full) } else { full }
}

/// Name of the application's router Deployment, Service, ServiceMonitor and RBAC objects:
/// `<app>-router`, shortened with a hash past 63 characters.
pub fn router_name(app_name: &str) -> String {
    let full = format!("{app_name}-router");
    if full.len() > MAX_NAME_LEN { shortened(&full) } else { full }
}

/// Name of the ServiceAccount the application's model replicas run as, and of the NetworkPolicy
/// that admits only the router to them: `<app>-models`, shortened with a hash past 63 characters.
pub fn models_name(app_name: &str) -> String {
    let full = format!("{app_name}-models");
    if full.len() > MAX_NAME_LEN { shortened(&full) } else { full }
}

/// Lower-case DNS-1035 form of a model id: runs of other characters become one `-`, so a slug
/// never contains `--` and never starts or ends with `-`.
pub fn slug(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// Label-safe model id: characters labels refuse become `_`; an id that still is no valid label
/// value is cut and ends in `-` and a hash of the exact id.
pub fn label_value(id: &str) -> String {
    let mapped: String =
        id.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    if is_label_value(&mapped) {
        return mapped;
    }
    let hash = hash_hex(id);
    let head = truncate(&mapped, MAX_NAME_LEN - 1 - HASH_HEX).trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if head.is_empty() { hash } else { format!("{head}-{hash}") }
}

/// Whether `s` is a valid Kubernetes label value: empty, or at most 63 characters of
/// `[A-Za-z0-9._-]` that start and end with a letter or digit.
pub fn is_label_value(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.is_empty()
        || (s.len() <= MAX_NAME_LEN
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && edge(s.chars().next())
            && edge(s.chars().next_back()))
}

/// Whether `s` is a DNS-1035 label: at most 63 characters of `[a-z0-9-]`, starting with a letter
/// and ending with a letter or digit (what a Service's name must be).
pub fn is_dns_1035_label(s: &str) -> bool {
    s.len() <= MAX_NAME_LEN
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && s.chars().next_back().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// `full` cut to fit 63 characters with `---` and its hash: `<head>---<10 hex digits>`.
fn shortened(full: &str) -> String {
    let head = truncate(full, MAX_NAME_LEN - SHORTENED.len() - HASH_HEX).trim_end_matches('-');
    format!("{head}{SHORTENED}{}", hash_hex(full))
}

/// The top 40 bits of the 64-bit FNV-1a hash of `s`, as 10 lower-case hex digits. FNV-1a is
/// spelled out here because names must not change with the Rust version (std's hasher may).
fn hash_hex(s: &str) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = s.bytes().fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    format!("{:0width$x}", hash >> (64 - 4 * HASH_HEX), width = HASH_HEX)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn slug_makes_dns_labels() {
        assert_eq!(slug("qwen-0.5b"), "qwen-0-5b");
        assert_eq!(slug("Qwen/Qwen2.5-0.5B-Instruct"), "qwen-qwen2-5-0-5b-instruct");
        assert_eq!(slug("--a__b--"), "a-b");
    }

    #[test]
    fn names_that_met_under_the_single_hyphen_scheme_differ() {
        assert_eq!(model_object_name("a", "b-c"), "a--b-c");
        assert_eq!(model_object_name("a-b", "c"), "a-b--c");
        assert_eq!(model_object_name("x", "y-router"), "x--y-router");
        assert_eq!(router_name("x-y"), "x-y-router");
        assert_eq!(model_object_name("x", "router"), "x--router");
        assert_ne!(model_object_name("x", "router"), router_name("x"));
    }

    #[test]
    fn long_names_are_cut_and_hashed() {
        let app = "a".repeat(63);
        let r = router_name(&app);
        assert_eq!(r.len(), 63);
        assert!(r.starts_with(&"a".repeat(50)) && r.contains("---"), "{r}");
        assert_eq!(r, router_name(&app), "deterministic");
        let m = model_object_name("short", &"m".repeat(128));
        assert!(is_dns_1035_label(&m) && m.starts_with("short--mmm"), "{m}");
        // The hash is FNV-1a's, pinned: a changed name would orphan every running child.
        assert_eq!(hash_hex(""), "cbf29ce484");
        assert_eq!(hash_hex("a"), "af63dc4c86");
        // A name of exactly 63 characters is kept whole.
        let app = "b".repeat(56);
        assert_eq!(router_name(&app), format!("{app}-router"));
        // An empty slug (which validate.rs refuses) still gives a valid name.
        assert!(is_dns_1035_label(&model_object_name("app", "🙂")));
    }

    #[test]
    fn label_values_are_label_safe() {
        assert_eq!(label_value("Qwen/Qwen2.5:latest"), "Qwen_Qwen2.5_latest");
        let long = format!("org/{}", "x".repeat(124));
        let v = label_value(&long);
        assert!(is_label_value(&v) && v.starts_with("org_xxx"), "{v}");
        assert_ne!(v, label_value(&format!("{long}y")), "ids with one head differ by their hash");
        assert!(is_label_value(&label_value("model-")) && label_value("model-").starts_with("model-"));
        assert!(is_label_value(&label_value("🙂")));
    }

    /// A DNS-1035 label without `--`, up to the full 63 characters.
    fn app_name() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z]([a-z0-9]|-[a-z0-9]){0,31}", "[a-z][a-z0-9]{62}", "[a-z]([a-z0-9]{1,8}-){6}[a-z0-9]{1,8}"]
            .prop_filter("at most 63 characters", |s| s.len() <= MAX_NAME_LEN)
    }

    /// Arbitrary Unicode, ids the CRD admits, and ids built to look like names and suffixes.
    fn model_id() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,40}",
            ".{0,200}",
            "[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}",
            "[a-z0-9]{1,3}(-[a-z0-9]{1,3}){0,4}(-router)?",
            "[a-z0-9-]{40,70}(---[0-9a-f]{10})?",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn every_name_is_a_dns_label_and_the_label_a_label_value(app in app_name(), id in model_id()) {
            let name = model_object_name(&app, &id);
            prop_assert!(is_dns_1035_label(&name), "{name:?}");
            prop_assert_eq!(&name, &model_object_name(&app, &id), "deterministic");
            let router = router_name(&app);
            prop_assert!(is_dns_1035_label(&router), "{router:?}");
            prop_assert_ne!(&name, &router);
            let label = label_value(&id);
            prop_assert!(is_label_value(&label), "{label:?}");
            prop_assert_eq!(label, label_value(&id));
        }

        #[test]
        fn distinct_app_and_slug_pairs_never_share_a_name(
            pairs in prop::collection::vec((app_name(), model_id()), 1..24),
            apps in prop::collection::vec(app_name(), 0..8),
        ) {
            // name -> what wants it: Some(slug) for a model, None for the router, with the app.
            let mut owners: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
            let mut claim = |name: String, who: (String, Option<String>)| -> Result<(), TestCaseError> {
                if let Some(other) = owners.insert(name.clone(), who.clone()) {
                    prop_assert_eq!(&other, &who, "{} is wanted by two", name);
                }
                Ok(())
            };
            for (app, id) in &pairs {
                let slug = slug(id);
                if slug.is_empty() {
                    continue; // validate.rs refuses such a model
                }
                claim(model_object_name(app, id), (app.clone(), Some(slug)))?;
                claim(router_name(app), (app.clone(), None))?;
            }
            for app in &apps {
                claim(router_name(app), (app.clone(), None))?;
            }
        }

        #[test]
        fn models_of_one_app_with_distinct_slugs_have_distinct_labels(a in model_id(), b in model_id()) {
            prop_assume!(slug(&a) != slug(&b));
            prop_assert_ne!(label_value(&a), label_value(&b));
        }
    }
}
