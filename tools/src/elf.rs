//! What an ELF binary asks of the C library: the `GLIBC_x.y` versions in its
//! `.gnu.version_r` section, the versions the dynamic loader checks before it
//! runs a single instruction. A binary runs on a glibc only when that glibc
//! provides every one of them, so the newest one is the binary's floor.

use std::cmp::Ordering;
use std::fmt;

use anyhow::{bail, Context, Result};
use object::elf::{FileHeader32, FileHeader64};
use object::read::elf::{ElfFile, FileHeader};
use object::{Architecture, Endianness, Object};

/// A glibc version such as `2.31` or `2.2.5`, compared number by number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlibcVersion(Vec<u32>);

impl GlibcVersion {
    /// Parses `2.31`; `None` for anything that is not dot-separated numbers.
    pub fn parse(text: &str) -> Option<GlibcVersion> {
        let parts: Option<Vec<u32>> = text.split('.').map(|p| p.parse().ok()).collect();
        parts.filter(|p| !p.is_empty()).map(GlibcVersion)
    }
}

impl Ord for GlibcVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        let len = self.0.len().max(other.0.len());
        let at = |v: &[u32], i: usize| v.get(i).copied().unwrap_or(0);
        (0..len).map(|i| at(&self.0, i).cmp(&at(&other.0, i))).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
    }
}

impl PartialOrd for GlibcVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for GlibcVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u32::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

/// The parts of a binary that decide where it runs.
#[derive(Clone, Debug)]
pub struct Needs {
    /// The ELF machine, in the spelling of target triples (`aarch64`, `x86_64`).
    pub arch: &'static str,
    /// Every `GLIBC_*` version the binary needs, sorted, without repeats.
    pub glibc: Vec<GlibcVersion>,
    /// `GLIBC_*` names that are not a plain version (such as
    /// `GLIBC_ABI_DT_RELR` or `GLIBC_PRIVATE`), as found.
    pub glibc_other: Vec<String>,
}

impl Needs {
    /// The newest glibc version needed, if any.
    pub fn newest(&self) -> Option<&GlibcVersion> {
        self.glibc.last()
    }

    /// Fails with one line naming every need beyond `floor`.
    pub fn check(&self, floor: &GlibcVersion) -> Result<()> {
        let mut beyond: Vec<String> =
            self.glibc.iter().filter(|v| *v > floor).map(|v| format!("GLIBC_{v}")).collect();
        beyond.extend(self.glibc_other.iter().cloned());
        if !beyond.is_empty() {
            bail!("expected no GLIBC version newer than {floor} but the binary needs {}", beyond.join(", "));
        }
        Ok(())
    }
}

/// Reads the machine and the glibc version needs of the ELF file `bytes`.
pub fn needs(bytes: &[u8]) -> Result<Needs> {
    match bytes.get(4) {
        Some(1) => needs_of::<FileHeader32<Endianness>>(bytes),
        Some(2) => needs_of::<FileHeader64<Endianness>>(bytes),
        _ => bail!("expected an ELF file"),
    }
}

fn needs_of<Elf: FileHeader<Endian = Endianness>>(bytes: &[u8]) -> Result<Needs> {
    let file = ElfFile::<Elf>::parse(bytes).context("expected an ELF file")?;
    let arch = match file.architecture() {
        Architecture::Aarch64 => "aarch64",
        Architecture::X86_64 => "x86_64",
        Architecture::Arm => "arm",
        Architecture::I386 => "i686",
        Architecture::Riscv64 => "riscv64",
        other => bail!("unexpected ELF machine {other:?}"),
    };
    let endian = file.endian();
    let sections = file.elf_section_table();
    let mut glibc = Vec::new();
    let mut glibc_other = Vec::new();
    let verneed = sections.gnu_verneed(endian, bytes).context("reading .gnu.version_r")?;
    if let Some((mut files, link)) = verneed {
        let strings = sections.strings(endian, bytes, link).context("reading .gnu.version_r's strings")?;
        while let Some((_, mut versions)) = files.next().context("reading .gnu.version_r")? {
            while let Some(aux) = versions.next().context("reading .gnu.version_r")? {
                let name = aux.name(endian, strings).context("reading .gnu.version_r's strings")?;
                let name = String::from_utf8_lossy(name);
                if let Some(version) = name.strip_prefix("GLIBC_") {
                    match GlibcVersion::parse(version) {
                        Some(v) => glibc.push(v),
                        None => glibc_other.push(name.into_owned()),
                    }
                }
            }
        }
    }
    glibc.sort();
    glibc.dedup();
    glibc_other.sort();
    glibc_other.dedup();
    Ok(Needs { arch, glibc, glibc_other })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> GlibcVersion {
        GlibcVersion::parse(text).unwrap()
    }

    #[test]
    fn versions_compare_number_by_number() {
        assert!(v("2.2.5") < v("2.3"));
        assert!(v("2.10") > v("2.9"));
        assert_eq!(v("2.31").cmp(&v("2.31.0")), Ordering::Equal);
        assert_eq!(v("2.2.5").to_string(), "2.2.5");
        for bad in ["", "2.", "PRIVATE", "2.x"] {
            assert!(GlibcVersion::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn check_names_every_need_beyond_the_floor() {
        let needs = Needs {
            arch: "aarch64",
            glibc: vec![v("2.17"), v("2.33"), v("2.34")],
            glibc_other: vec!["GLIBC_ABI_DT_RELR".into()],
        };
        assert_eq!(
            needs.check(&v("2.31")).unwrap_err().to_string(),
            "expected no GLIBC version newer than 2.31 but the binary needs GLIBC_2.33, GLIBC_2.34, \
             GLIBC_ABI_DT_RELR"
        );
        let plain = Needs { glibc_other: vec![], ..needs };
        assert!(plain.check(&v("2.34")).is_ok());
        assert_eq!(plain.newest(), Some(&v("2.34")));
    }

    #[test]
    fn reads_the_running_test_binary() {
        let bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let needs = needs(&bytes).unwrap();
        assert_eq!(needs.arch, std::env::consts::ARCH);
        // Every Rust binary on glibc needs some GLIBC_2.x symbol (memcpy, pthread_*).
        assert!(needs.newest().is_some_and(|n| *n >= v("2.2.5")), "{needs:?}");
    }

    #[test]
    fn refuses_what_is_not_elf() {
        assert_eq!(needs(b"#!/bin/sh\n").unwrap_err().to_string(), "expected an ELF file");
        assert!(needs(b"\x7fELF\x02\x01").is_err());
    }
}
