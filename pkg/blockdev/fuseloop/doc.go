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
// Failure model. If this process dies, the kernel aborts the FUSE connection
// (its /dev/fuse fd is closed) and every I/O on the loop device fails at once
// with EIO; a filesystem on it sees I/O errors (ext4 turns read-only). A new
// process calls Cleanup to detach what is left. If the process is alive but a
// Backend call is stuck, the watchdog aborts the FUSE connection after
// Options.RequestTimeout, so no kernel task stays in D state; the device then
// reports the failure through Done and Err.
//
// Linux only; needs root (mount, loop devices), /dev/fuse and /dev/loop-control.
package fuseloop
