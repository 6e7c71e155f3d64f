//! Container names: validation and dockerd-style random names.

const ADJECTIVES: &[&str] = &[
    "admiring", "agitated", "amazing", "bold", "brave", "busy", "clever", "cool", "dazzling", "eager",
    "elegant", "epic", "festive", "focused", "gallant", "gifted", "happy", "hopeful", "jolly", "keen",
    "kind", "loving", "lucid", "modest", "nifty", "nostalgic", "peaceful", "quirky", "relaxed", "serene",
    "sharp", "stoic", "sweet", "tender", "trusting", "vibrant", "wizardly", "youthful", "zealous", "zen",
];

const NAMES: &[&str] = &[
    "babbage", "bardeen", "bohr", "curie", "darwin", "dijkstra", "einstein", "euler", "fermat", "feynman",
    "galileo", "gauss", "hopper", "hypatia", "johnson", "kepler", "knuth", "lamport", "lovelace", "mayer",
    "mcclintock", "meitner", "newton", "noether", "pascal", "ritchie", "shannon", "thompson", "torvalds", "turing",
];

/// `^[a-zA-Z0-9][a-zA-Z0-9_.-]+$`, dockerd's rule.
pub fn valid(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphanumeric()
        && b[1..].iter().all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

pub fn random() -> String {
    let a = ADJECTIVES[rand::random_range(0..ADJECTIVES.len())];
    let n = NAMES[rand::random_range(0..NAMES.len())];
    format!("{a}_{n}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_follow_dockerds_pattern() {
        assert!(super::valid("web-1.a_b"));
        assert!(!super::valid("-web"));
        assert!(!super::valid("a"));
        assert!(!super::valid("we b"));
        assert!(super::valid(&super::random()));
    }
}
