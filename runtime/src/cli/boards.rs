//! `edgevit boards`: the board profiles built in, or the one in force.

use std::fmt;
use std::io::Write;

use anyhow::Result;

use crate::board::{BackendChoice, Board, BoardArgs, DEVICE_BOARD_FILE};

#[derive(Debug, clap::Args)]
pub struct BoardsArgs {
    #[command(flatten)]
    pub board: BoardArgs,
    /// Show only the profile in force: --board, --board-file or /etc/edgevit/board.toml.
    #[arg(long)]
    pub current: bool,
    /// One JSON object per board.
    #[arg(long)]
    pub json: bool,
}

pub fn boards(args: &BoardsArgs) -> Result<()> {
    let boards = if args.current {
        vec![args.board.current()?.ok_or_else(|| {
            anyhow::anyhow!("no board profile: pass --board or --board-file, or install {DEVICE_BOARD_FILE}")
        })?]
    } else {
        Board::builtin()
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        for b in &boards {
            writeln!(out, "{}", serde_json::to_string(b)?)?;
        }
    } else {
        write!(out, "{}", BoardTable(&boards))?;
    }
    Ok(())
}

/// Boards as a table, one line each under a header.
struct BoardTable<'a>(&'a [Board]);

impl fmt::Display for BoardTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<18} {:<26} {:>6} {:>5} {:>8} {:>6} {:>7} {:>7}  gpu path",
            "board", "target", "glibc", "sm", "jetpack", "cuda", "backend", "threads"
        )?;
        for b in self.0 {
            let sm = b.cuda_arch.map_or("-".into(), |a| a.to_string());
            writeln!(
                f,
                "{:<18} {:<26} {:>6} {:>5} {:>8} {:>6} {:>7} {:>7}  {}",
                b.name,
                b.target,
                b.glibc,
                sm,
                b.jetpack.as_deref().unwrap_or("-"),
                b.cuda.as_deref().unwrap_or("-"),
                format!("{:?}", b.backend).to_lowercase(),
                if b.threads == 0 { "all".into() } else { b.threads.to_string() },
                if b.gpu_path() {
                    "yes"
                } else if b.cuda.is_none() && b.backend == BackendChoice::Auto {
                    "when present"
                } else {
                    "no"
                }
            )?;
        }
        Ok(())
    }
}
