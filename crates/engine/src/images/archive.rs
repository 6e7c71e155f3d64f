//! Placeholder until save/load/import land (being written).
use super::Images;
use crate::digest::Digest;
use crate::error::{Error, Kind, Result};
use crate::reference::Reference;

impl Images {
    pub fn save(&self, _names: &[String], _out: impl std::io::Write) -> Result<()> {
        Err(Error::new(Kind::NotImplemented, "save is not implemented yet"))
    }
    pub fn load(&self, _input: std::fs::File, _quiet: bool, _progress: &mut dyn FnMut(String)) -> Result<()> {
        Err(Error::new(Kind::NotImplemented, "load is not implemented yet"))
    }
    pub fn import(&self, _input: std::fs::File, _r: Option<Reference>, _changes: &[String], _message: &str) -> Result<Digest> {
        Err(Error::new(Kind::NotImplemented, "import is not implemented yet"))
    }
}
