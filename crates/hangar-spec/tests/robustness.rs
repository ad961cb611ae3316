//! No input makes the parser panic, and every rejection carries a code, a path-or-document
//! scope, a message and a hint.

use std::path::Path;

use hangar_spec::{parse, Format};
use proptest::prelude::*;

fn check(text: &str, format: Format) {
    if let Err(errors) = parse(text, format, Path::new("/x")) {
        assert!(!errors.0.is_empty());
        for d in &errors.0 {
            assert!(d.code.as_str().starts_with("E_"));
            assert!(!d.message.is_empty() && !d.hint.is_empty(), "{d:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,300}") {
        check(&text, Format::Toml);
        check(&text, Format::Json);
    }

    #[test]
    fn spec_shaped_text_never_panics(
        name in "[a-zA-Z0-9;$ -]{0,70}",
        vcpus in prop_oneof![Just("1".to_string()), Just("\"x\"".to_string()), any::<i64>().prop_map(|i| i.to_string()), Just("1.5".to_string())],
        key in "[a-z_]{1,12}",
        value in "[ -~]{0,40}",
        forward in "[a-z0-9:]{0,16}",
    ) {
        let text = format!(
            "schema_version = 1\nname = {name:?}\n[machine]\nvcpus = {vcpus}\n{key} = {value:?}\n[[nic]]\nname = \"n\"\nforward = [{forward:?}]\n[labels]\n{key} = {value:?}\n"
        );
        check(&text, Format::Toml);
    }
}
