package firewall

import (
	"context"
	"log/slog"
)

// NewNone returns the backend that holds nothing: bans are refused by the
// front ends, in-protocol, and never reach the kernel. It logs that once.
func NewNone(log *slog.Logger) Backend {
	if log == nil {
		log = slog.Default()
	}
	log.Info("firewall.backend is none: bans refuse in-protocol only")
	return none{}
}

type none struct{}

func (none) Add(context.Context, []Entry) error    { return nil }
func (none) Remove(context.Context, []Entry) error { return nil }
func (none) Sync(context.Context, []Entry) error   { return nil }
func (none) List(context.Context) ([]Entry, error) { return nil, nil }
func (none) Flush(context.Context) error           { return nil }
func (none) Close() error                          { return nil }
