//! Arbitrary bytes through the registry manifest parser, served under each
//! Content-Type a registry may send: parsing may fail but must not panic,
//! whatever it accepts respects the limits, an accepted image manifest
//! survives a serialize/parse round trip, and choosing a platform from an
//! accepted index does not panic. The same bytes also go through the image
//! config parser.

#![no_main]

use berth_engine::registry::image_config::ImageConfig;
use berth_engine::registry::manifest::{self, media_type, Manifest, MAX_INDEX_ENTRIES, MAX_LAYERS};
use berth_engine::registry::platform::{choose, Platform};
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: &[Option<&str>] = &[
    None,
    Some(media_type::DOCKER_MANIFEST),
    Some(media_type::DOCKER_MANIFEST_LIST),
    Some(media_type::OCI_MANIFEST),
    Some(media_type::OCI_INDEX),
    Some(media_type::DOCKER_SCHEMA1_SIGNED),
    Some("application/json; charset=utf-8"),
    Some("text/plain"),
];

fuzz_target!(|data: &[u8]| {
    for ct in CONTENT_TYPES {
        match manifest::parse(data, *ct) {
            Ok(Manifest::Image(m)) => {
                assert!(m.layers.len() <= MAX_LAYERS);
                let again = manifest::parse(&m.to_json(), Some(m.kind.media_type())).expect("re-parsing our own serialization");
                assert_eq!(again, Manifest::Image(m));
            }
            Ok(Manifest::Index(i)) => {
                assert!(i.manifests.len() <= MAX_INDEX_ENTRIES);
                for p in ["linux/amd64", "linux/arm64", "linux/arm/v7", "windows/amd64"] {
                    let _ = choose(&i, &Platform::parse(p).expect("a valid platform"));
                }
            }
            Err(_) => {}
        }
    }
    let _ = ImageConfig::from_slice(data);
});
