// Command pause is the e2e's pod sandbox image (containerd's sandbox_image): it
// sleeps until it is told to stop. Built static, it is the whole image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGINT, syscall.SIGTERM)
	<-c
}
