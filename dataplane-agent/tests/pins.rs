//! Pinning on a real BPF filesystem: maps survive a reload with their contents, and pins of an
//! older map layout are removed. Needs root; fails, never skips.

use std::path::PathBuf;
use std::process::Command;

use skiff::bpf::{object::PINNED_MAPS, pins::PinDir, writer::Writer, Datapath};
use skiff::desired::{
    BackendAddr, DesiredState, Frontend, FrontendEntry, Protocol, ServicePortRef,
};

/// A private bpffs, unmounted on drop (even when the test fails).
struct Bpffs(PathBuf);

impl Bpffs {
    fn mount(test: &str) -> Bpffs {
        let dir = std::env::temp_dir().join(format!("skiff-pins-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(ok.success(), "mount -t bpf (needs root)");
        Bpffs(dir)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn desired() -> DesiredState {
    let mut d = DesiredState::default();
    d.frontends.insert(
        Frontend {
            addr: "10.96.0.10".parse().unwrap(),
            port: 80,
            proto: Protocol::Tcp,
        },
        FrontendEntry {
            service: ServicePortRef {
                namespace: "ns".into(),
                name: "web".into(),
                port_name: String::new(),
            },
            backends: vec![BackendAddr {
                addr: "10.244.1.11".parse().unwrap(),
                port: 8080,
                proto: Protocol::Tcp,
            }],
        },
    );
    d
}

#[test]
fn pinned_maps_keep_their_contents_across_a_reload() {
    let fs = Bpffs::mount("reload");
    let pins = PinDir::open(fs.0.join("skiff")).unwrap();
    let before = {
        let mut dp = Datapath::load_with(Some(&pins)).unwrap();
        let mut w = Writer::new(&dp.maps).unwrap();
        w.sync(&mut dp.maps, &desired()).unwrap();
        w.current().clone()
    };
    for m in PINNED_MAPS {
        assert!(pins.map_path(m).exists(), "{m} is pinned");
    }
    // A new agent: the maps come back with what the first one wrote, and nothing to change.
    let mut dp = Datapath::load_with(Some(&pins)).unwrap();
    let mut w = Writer::new(&dp.maps).unwrap();
    assert_eq!(w.current(), &before);
    assert_eq!(w.sync(&mut dp.maps, &desired()).unwrap().ops, 0);
    // Without pins, maps start empty.
    let fresh = Datapath::load().unwrap();
    assert!(fresh.maps.read_services().unwrap().is_empty());
    drop(dp);
    skiff::bpf::pins::remove_all(pins.root()).unwrap();
}

#[test]
fn pins_of_an_older_map_layout_are_removed() {
    let fs = Bpffs::mount("stale");
    let pins = PinDir::open(fs.0.join("skiff")).unwrap();
    drop(Datapath::load_with(Some(&pins)).unwrap());
    // Pretend an older agent left a map of a previous layout version.
    let old = pins.map_path("SK_BE_V0");
    std::fs::rename(pins.map_path("SK_BE_V1"), &old).unwrap();
    drop(Datapath::load_with(Some(&pins)).unwrap());
    let removed = pins.remove_stale_maps(&PINNED_MAPS).unwrap();
    assert_eq!(removed, vec![old.clone()]);
    assert!(!old.exists());
    for m in PINNED_MAPS {
        assert!(pins.map_path(m).exists(), "{m} kept");
    }
    skiff::bpf::pins::remove_all(pins.root()).unwrap();
    assert!(!pins.root().exists());
}
