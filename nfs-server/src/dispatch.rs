//! The program table: which (program, version, procedure) triples exist, and
//! the uniform handler signature they share. Wrong programs, versions and
//! procedures are answered here, before any handler runs.

use std::sync::Arc;

use crate::fs::Filesystem;
use crate::metrics::Metrics;
use crate::rpc::{CallHeader, Reply};
use crate::server::AccessList;
use crate::{acl, mount, nfs3, portmap};

/// What every handler can reach.
#[derive(Debug)]
pub struct Context {
    pub fs: Arc<Filesystem>,
    pub metrics: Arc<Metrics>,
    /// The TCP port this server listens on, for portmapper answers.
    pub port: u16,
    /// Which repositories each client may use.
    pub access: Arc<AccessList>,
}

/// A handler decodes its arguments and answers. Handlers may call into the
/// filesystem (and so `gix`): they run on a blocking thread.
pub type Handler = fn(&Context, &CallHeader, &[u8]) -> Reply;

/// One procedure of a program.
#[derive(Clone, Copy)]
pub struct Procedure {
    pub program: &'static str,
    pub name: &'static str,
    pub handler: Handler,
}

/// A program we serve: its number, its one supported version and its
/// procedures, indexed by procedure number.
struct Program {
    number: u32,
    version: u32,
    name: &'static str,
    procedures: &'static [(&'static str, Handler)],
}

const PROGRAMS: &[Program] = &[
    Program {
        number: nfs3::PROGRAM,
        version: nfs3::VERSION,
        name: "nfs3",
        procedures: nfs3::PROCEDURES,
    },
    Program {
        number: mount::PROGRAM,
        version: mount::VERSION,
        name: "mount3",
        procedures: mount::PROCEDURES,
    },
    Program {
        number: acl::PROGRAM,
        version: acl::VERSION,
        name: "nfsacl3",
        procedures: acl::PROCEDURES,
    },
    Program {
        number: portmap::PROGRAM,
        version: portmap::VERSION,
        name: "portmap2",
        procedures: portmap::PROCEDURES,
    },
];

/// Finds the procedure a call names, or the RPC error that answers it.
pub fn route(header: &CallHeader) -> Result<Procedure, Reply> {
    let program = PROGRAMS
        .iter()
        .find(|p| p.number == header.prog)
        .ok_or(Reply::ProgUnavail)?;
    if program.version != header.vers {
        return Err(Reply::ProgMismatch {
            low: program.version,
            high: program.version,
        });
    }
    let (name, handler) = *program
        .procedures
        .get(header.proc_ as usize)
        .ok_or(Reply::ProcUnavail)?;
    Ok(Procedure {
        program: program.name,
        name,
        handler,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::Credential;

    fn call(prog: u32, vers: u32, proc_: u32) -> CallHeader {
        CallHeader {
            xid: 1,
            prog,
            vers,
            proc_,
            cred: Credential::None,
            peer: None,
        }
    }

    #[test]
    fn routes_known_procedures() {
        let p = route(&call(100_003, 3, 6)).ok().unwrap();
        assert_eq!((p.program, p.name), ("nfs3", "READ"));
        let p = route(&call(100_227, 3, 1)).ok().unwrap();
        assert_eq!((p.program, p.name), ("nfsacl3", "GETACL"));
        let p = route(&call(100_005, 3, 1)).ok().unwrap();
        assert_eq!((p.program, p.name), ("mount3", "MNT"));
        let p = route(&call(100_000, 2, 3)).ok().unwrap();
        assert_eq!((p.program, p.name), ("portmap2", "GETPORT"));
    }

    #[test]
    fn unknown_program_version_and_procedure() {
        assert!(matches!(route(&call(999, 3, 0)), Err(Reply::ProgUnavail)));
        assert!(matches!(
            route(&call(100_003, 4, 0)),
            Err(Reply::ProgMismatch { low: 3, high: 3 })
        ));
        assert!(matches!(
            route(&call(100_003, 3, 22)),
            Err(Reply::ProcUnavail)
        ));
        assert!(matches!(
            route(&call(100_227, 3, 3)),
            Err(Reply::ProcUnavail)
        ));
    }
}
