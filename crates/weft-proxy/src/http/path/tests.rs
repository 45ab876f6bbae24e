use weft_model::{EscapedSlashes, PathParameters, PathPolicy};

use super::{normalize, normalize_match_value, PathError};

fn norm(p: &str) -> Result<String, PathError> {
    normalize(p, &PathPolicy::default()).map(|c| c.into_owned())
}

fn lenient() -> PathPolicy {
    PathPolicy {
        escaped_slashes: EscapedSlashes::Keep,
        merge_slashes: true,
        path_parameters: PathParameters::Strip,
    }
}

#[test]
fn normal_paths_are_borrowed_untouched() {
    for p in ["/", "/a/b", "/api/v1/users:search", "/a-b_c~d.e/f@g", "*"] {
        assert!(
            matches!(normalize(p, &PathPolicy::default()), Ok(std::borrow::Cow::Borrowed(q)) if q == p),
            "{p}"
        );
    }
}

#[test]
fn unreserved_escapes_are_decoded_and_dot_segments_resolved() {
    for (input, want) in [
        ("/public/%2e%2e/admin/x", "/admin/x"),
        ("/public/%2E%2E/admin/x", "/admin/x"),
        ("/public/.%2e/admin", "/admin"),
        ("/%61dmin/x", "/admin/x"),
        ("/adm%69n/x", "/admin/x"),
        ("/x/%2e%2e/admin/x", "/admin/x"),
        ("/public/../admin", "/admin"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("/a/./b/.", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/..", "/"),
        ("/%7euser", "/~user"),
        ("/a/%2e", "/a/"),
    ] {
        assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
    }
}

#[test]
fn other_escapes_are_upper_cased_and_raw_specials_escaped() {
    for (input, want) in [
        ("/a%3fb", "/a%3Fb"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/café", "/caf%C3%A9"),
        ("/a%20b", "/a%20b"),
        ("/a\"b{c}|d^e", "/a%22b%7Bc%7D%7Cd%5Ee"),
        ("/%2541", "/%2541"),
        ("/100%25", "/100%25"),
    ] {
        assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
    }
}

#[test]
fn ambiguous_spellings_are_refused_by_default() {
    for (input, why) in [
        ("/%2fadmin/x", PathError::EscapedSlash),
        ("/admin%2Fx", PathError::EscapedSlash),
        ("/public/..%2fadmin/x", PathError::EscapedSlash),
        ("/admin%5cx", PathError::EscapedSlash),
        ("/admin\\x", PathError::EscapedSlash),
        ("/;/admin/x", PathError::PathParameter),
        ("/admin;x=1/y", PathError::PathParameter),
        ("/a%zz", PathError::BadEscape),
        ("/a%4", PathError::BadEscape),
        ("/a%", PathError::BadEscape),
        ("/admin%00.html", PathError::ControlCharacter),
        ("/a%0d%0aSet-Cookie:x", PathError::ControlCharacter),
        ("/%c0%ae%c0%ae/admin", PathError::NotUtf8),
        ("/a%ff", PathError::NotUtf8),
        ("/public/%252e%252e/admin", PathError::DoubleEncoded),
        ("/a%252Fb", PathError::DoubleEncoded),
        ("/a%25%32%65", PathError::DoubleEncoded),
    ] {
        assert_eq!(norm(input), Err(why), "{input}");
    }
}

#[test]
fn repeated_slashes_merge_unless_turned_off() {
    assert_eq!(norm("//admin/x").as_deref(), Ok("/admin/x"));
    assert_eq!(norm("/a//..//b").as_deref(), Ok("/b"));
    let keep = PathPolicy {
        merge_slashes: false,
        ..PathPolicy::default()
    };
    assert_eq!(normalize("//admin", &keep).as_deref(), Ok("//admin"));
    assert_eq!(normalize("/a//../b", &keep).as_deref(), Ok("/a/b"));
}

#[test]
fn the_lenient_policy_keeps_slashes_escaped_and_strips_parameters() {
    let p = lenient();
    for (input, want) in [
        ("/admin%2fx", "/admin%2Fx"),
        ("/a\\b", "/a%5Cb"),
        ("/public/..%2fadmin/x", "/public/..%2Fadmin/x"),
        ("/;/admin/x", "/admin/x"),
        ("/admin;x=1/y", "/admin/y"),
        ("/public/..;/admin", "/admin"),
        ("/a;jsessionid=1", "/a"),
    ] {
        assert_eq!(normalize(input, &p).as_deref(), Ok(want), "{input}");
    }
}

#[test]
fn normalizing_twice_changes_nothing() {
    for input in [
        "/a//b/../c/./d",
        "/%2e%2E/x",
        "/a;b/..;c/d",
        "/x/%25/y",
        "/caf%c3%a9/..",
        "//",
        "/a/b/c/../../..",
        "/.../a",
        "/a\\..\\b",
    ] {
        for policy in [PathPolicy::default(), lenient()] {
            if let Ok(once) = normalize(input, &policy) {
                assert_eq!(normalize(&once, &policy).as_deref(), Ok(&*once), "{input}");
            }
        }
    }
}

#[test]
fn configured_match_values_take_the_same_form() {
    assert_eq!(normalize_match_value("/caf%c3%a9"), "/caf%C3%A9");
    assert_eq!(normalize_match_value("/%61dmin"), "/admin");
    assert_eq!(normalize_match_value("/a/../b"), "/b");
    assert_eq!(normalize_match_value("/files%2f"), "/files%2F");
    assert_eq!(normalize_match_value("/api"), "/api");
}
