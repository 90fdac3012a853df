// Package fuseloop exposes a block backend to the kernel as a loop device
// over a FUSE file served by this process.
//
// Attach mounts a tiny FUSE filesystem at <StateDir>/<Name>/fuse holding one
// regular file, "disk", whose reads, writes, fsyncs and fallocates are served
// in-process by a Backend, and binds a loop device to that file with direct
// I/O (LOOP_CONFIGURE, LO_FLAGS_DIRECT_IO). The kernel then sees /dev/loopN:
//
//	kernel I/O on /dev/loopN
//	  -> loop driver (direct I/O, async, many requests in flight)
//	  -> FUSE file <StateDir>/<Name>/fuse/disk (FOPEN_DIRECT_IO, parallel direct writes, async DIO)
//	  -> this process: READ/WRITE/FSYNC/FALLOCATE -> Backend
//
// Mapping of requests:
//
//	READ                               -> Backend.ReadAt
//	WRITE                              -> Backend.WriteAt
//	FSYNC / FDATASYNC (REQ_OP_FLUSH)   -> Backend.Flush
//	FALLOCATE PUNCH_HOLE (discard, and write-zeroes that may unmap)
//	                                   -> Backend.Discard (the range must read back as zeroes)
//	FALLOCATE ZERO_RANGE (write-zeroes with REQ_NOUNMAP)
//	                                   -> Backend.WriteZeroes
//	any other fallocate mode           -> EOPNOTSUPP
//
// Requests are read by a pool of readers, each answering what it read
// (serve in server_linux.go); every loop I/O is one FUSE request (no
// GETATTR or FLUSH per I/O, up to 1 MiB per WRITE: BenchmarkServe counts
// them with Device.RequestCounts).
//
// The FUSE protocol is spoken by this package (server_linux.go, proto_linux.go),
// not by a library: a one-file filesystem needs a dozen opcodes, and a
// connection handed to a successor needs node ids and file handles fixed in
// advance (root 1, disk 2, handle 7), INIT parameters recorded (Meta), a
// reader that can stop without aborting the connection (poll(2) on the
// non-blocking /dev/fuse and an eventfd), and FUSE_NOTIFY_RESEND.
//
// Failure model. If this process dies and no other process holds its
// connection, the kernel aborts the FUSE connection (its /dev/fuse fd is
// closed) and every I/O on the loop device fails at once with EIO; a
// filesystem on it sees I/O errors (ext4 turns read-only). A new process
// calls Cleanup to detach what is left.
//
// Handover (handover_linux.go). When a holder (pkg/fuseholder) keeps a dup of
// the connection's file, the connection survives the process: I/O pauses.
// A successor takes a dup back and calls Adopt, which writes
// FUSE_NOTIFY_RESEND (Linux 6.9+) so the requests the dead process had read
// but not answered are queued again, then serves; AdoptOrAttach wraps the
// decision and the fallback (Cleanup, Attach). Handoff is the planned stop:
// stop reading, answer what was read, leave the connection to the holder. If the process is alive but a
// Backend call is stuck, the watchdog aborts the FUSE connection after
// Options.RequestTimeout, so no kernel task stays in D state; the device then
// reports the failure through Done and Err.
//
// Linux only; needs root (mount, loop devices), /dev/fuse and /dev/loop-control.
package fuseloop
