//! TCP echo (port 7): whatever a client sends comes back, across several connections.

use alloc::vec::Vec;

use tether_netstack::smoltcp::iface::{SocketHandle, SocketSet};
use tether_netstack::smoltcp::socket::tcp;

const BUFFER: usize = 64 * 1024;

pub struct EchoService {
    port: u16,
    sockets: Vec<SocketHandle>,
}

impl EchoService {
    pub fn new(set: &mut SocketSet<'static>, port: u16, connections: usize) -> EchoService {
        let sockets = (0..connections)
            .map(|_| {
                let rx = tcp::SocketBuffer::new(alloc::vec![0u8; BUFFER]);
                let tx = tcp::SocketBuffer::new(alloc::vec![0u8; BUFFER]);
                let mut socket = tcp::Socket::new(rx, tx);
                // Listening from the start: a SYN in the first poll must not meet a RST.
                let _ = socket.listen(port);
                set.add(socket)
            })
            .collect();
        EchoService { port, sockets }
    }
}

impl super::service::Service for EchoService {
    /// Moves what each connection received to its send buffer (as much as fits); re-arms
    /// closed sockets.
    fn run(&mut self, set: &mut SocketSet<'static>) -> bool {
        let mut moved = false;
        for &handle in &self.sockets {
            let socket = set.get_mut::<tcp::Socket>(handle);
            if !socket.is_open() {
                let _ = socket.listen(self.port);
                continue;
            }
            while socket.can_recv() && socket.can_send() {
                let room = socket.send_capacity() - socket.send_queue();
                let chunk = socket.recv(|data| {
                    let n = data.len().min(room);
                    (n, data[..n].to_vec())
                });
                match chunk {
                    Ok(bytes) if !bytes.is_empty() => {
                        let _ = socket.send_slice(&bytes);
                        moved = true;
                    }
                    _ => break,
                }
            }
            // The client finished sending and has everything back: finish our side too.
            if socket.state() == tcp::State::CloseWait && socket.send_queue() == 0 {
                socket.close();
            }
        }
        moved
    }
}
