package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mailguard/mailguard/internal/escape"
	"github.com/mailguard/mailguard/logwatch/filter"
)

func testFilterCmd() *cobra.Command {
	var (
		mode         string
		printMatches bool
		missed       int
	)
	cmd := &cobra.Command{
		Use:   "test-filter LOG|- FILTER [--mode M] [--print-matches]",
		Short: "run a fail2ban-syntax filter over a log, like fail2ban-regex",
		Long: `test-filter reads LOG (or standard input for -) line by line through FILTER,
a shipped filter's name (` + strings.Join(filter.Shipped(), ", ") + `) or the path of a
filter file in fail2ban's syntax (/etc/fail2ban/filter.d/x.conf loads as it is),
and prints the hits of each regex, the engine each regex runs on (re2, or
regexp2 for lookaround and backreferences), the first missed lines, the speed,
and fail2ban-regex's summary line:
  Lines: N lines, I ignored, M matched, X missed
It counts as fail2ban-regex does: comment (#) and empty lines are skipped,
every failregex is tried on every line, <F-NOFAIL> lines count as ignored,
and multi-line filters (maxlines, <F-MLFID>) join lines as the daemon does.`,
		Args: usageArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := filter.Open(args[1], mode, nil)
			if err != nil {
				return &exitError{exitUsage, err}
			}
			var in io.Reader = cmd.InOrStdin()
			if args[0] != "-" {
				fh, err := os.Open(args[0])
				if err != nil {
					return &exitError{exitUsage, err}
				}
				defer fh.Close()
				in = fh
			}
			return runTestFilter(cmd.OutOrStdout(), in, args[0], f, printMatches, missed, time.Now)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&mode, "mode", "", "filter mode (default: the filter's own mode option)")
	fl.BoolVar(&printMatches, "print-matches", false, "print every matched line with the address and user taken from it")
	fl.IntVar(&missed, "missed", 20, "how many missed lines to print")
	return cmd
}

// filterStats counts what test-filter reports.
type filterStats struct {
	lines, ignored, matched, missed int
	noAddr, tooLong, pending        int
	pref                            int
	fail                            []int
	missedLines                     []string
}

func runTestFilter(out io.Writer, in io.Reader, logName string, f *filter.Filter, printMatches bool, showMissed int, now func() time.Time) error {
	w := bufio.NewWriter(out)
	defer w.Flush()
	st := filterStats{fail: make([]int, len(f.Fail))}
	rd := bufio.NewReaderSize(in, 64<<10)
	start := now()
	tr := f.NewRegexTracker()
	if printMatches {
		fmt.Fprintln(w, "Matched lines:")
	}
	for {
		line, tooLong, err := readLine(rd, filter.MaxLineLength)
		if err != nil && (err != io.EOF || line == "" && !tooLong) {
			if err == io.EOF {
				break
			}
			return fmt.Errorf("test-filter: reading %s: %w", logName, err)
		}
		if !tooLong && (line == "" || line[0] == '#') {
			// fail2ban-regex skips these without counting them
			if err == io.EOF {
				break
			}
			continue
		}
		st.lines++
		if tooLong {
			st.tooLong++
			st.missed++
			st.addMissed(showMissed, "(line longer than the limit, not matched)")
			continue
		}
		r := tr.Examine(line, start)
		if f.Pref != nil && r.PrefMatched {
			st.pref++
		}
		for _, i := range r.Hits {
			st.fail[i]++
		}
		// earlier lines of a multi-line match were counted missed
		st.matched += r.Joined
		st.missed -= r.Joined
		switch r.Outcome {
		case filter.Ignored:
			st.ignored++
		case filter.Matched:
			st.matched++
			switch {
			case r.Pending:
				st.pending++
			case !r.Host.IsValid():
				st.noAddr++
			}
			if printMatches {
				host := r.Host.String()
				if !r.Host.IsValid() {
					host = "(no address: " + escape.String(r.HostName) + ")"
				}
				fmt.Fprintf(w, "  %s user=\"%s\" | %s\n", host, escape.String(r.User), escape.String(line))
			}
		default:
			st.missed++
			st.addMissed(showMissed, line)
		}
		if err == io.EOF {
			break
		}
	}
	took := now().Sub(start)

	fmt.Fprintf(w, "\nFilter: %s", f.Name)
	if f.Mode != "" {
		fmt.Fprintf(w, ", mode %s", f.Mode)
	}
	fmt.Fprintf(w, "\nLog:    %s\n\n", escape.String(logName))
	if f.Pref != nil {
		fmt.Fprintf(w, "Prefregex: %d total [%s]\n|  %s\n", st.pref, f.Pref.Engine(), f.Pref.Source)
		printLits(w, "|  ", f.Pref)
		fmt.Fprint(w, "`-\n\n")
	}
	hits := 0
	for _, n := range st.fail {
		hits += n
	}
	fmt.Fprintf(w, "Failregex: %d total\n|-  #) [# of hits] engine  regular expression\n", hits)
	for i, re := range f.Fail {
		fmt.Fprintf(w, "|  %2d) [%d] %-7s %s\n", i+1, st.fail[i], re.Engine(), re.Source)
		printLits(w, "|              ", re)
	}
	fmt.Fprintf(w, "`-\n\nIgnoreregex: %d total\n", st.ignored)
	for i, re := range f.Ignore {
		fmt.Fprintf(w, "|  %2d) %-7s %s\n", i+1, re.Engine(), re.Source)
	}
	fmt.Fprintln(w)
	if st.noAddr > 0 {
		fmt.Fprintf(w, "%d matched line(s) named a host, not an address: mailguard never resolves names and counts them for nobody\n", st.noAddr)
	}
	if st.pending > 0 {
		fmt.Fprintf(w, "%d matched line(s) were multi-line sessions still waiting for their host (counted by fail2ban-regex, not yet by mailguard)\n", st.pending)
	}
	if st.tooLong > 0 {
		fmt.Fprintf(w, "%d line(s) longer than %d bytes were not matched (counted as missed)\n", st.tooLong, filter.MaxLineLength)
	}
	fmt.Fprintf(w, "Lines: %d lines, %d ignored, %d matched, %d missed\n", st.lines, st.ignored, st.matched, st.missed)
	rate := "-"
	if took > 0 {
		rate = fmt.Sprintf("%.0f", float64(st.lines)/took.Seconds())
	}
	fmt.Fprintf(w, "[processed in %.2f sec, %s lines/s]\n", took.Seconds(), rate)
	if len(st.missedLines) > 0 {
		fmt.Fprintf(w, "\nMissed line(s) (first %d of %d):\n", len(st.missedLines), st.missed)
		for _, l := range st.missedLines {
			fmt.Fprintf(w, "  %s\n", escape.String(l))
		}
	}
	return nil
}

// printLits prints the literals a line must hold for re to be tried.
func printLits(w io.Writer, indent string, re *filter.Regex) {
	lits := re.Prefilter()
	if lits == nil {
		return
	}
	q := make([]string, len(lits))
	for i, l := range lits {
		q[i] = strconv.Quote(l)
	}
	fmt.Fprintf(w, "%sonly lines holding %s\n", indent, strings.Join(q, " or "))
}

func (st *filterStats) addMissed(limit int, line string) {
	if len(st.missedLines) < limit {
		st.missedLines = append(st.missedLines, line)
	}
}

// readLine returns the next line without its newline (and a CR before it).
// A line longer than max is consumed whole and reported tooLong, never cut
// into pieces that would each be matched.
func readLine(rd *bufio.Reader, max int) (line string, tooLong bool, err error) {
	frag, err := rd.ReadSlice('\n')
	if !errors.Is(err, bufio.ErrBufferFull) {
		// the whole line in one piece: one copy, into the string
		if len(frag) > max+2 {
			return "", true, err
		}
		return string(trimEOL(frag)), false, err
	}
	b := append([]byte(nil), frag...)
	for {
		frag, err = rd.ReadSlice('\n')
		if !tooLong {
			if len(b)+len(frag) > max+2 {
				tooLong, b = true, nil
			} else {
				b = append(b, frag...)
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if tooLong {
			return "", true, err
		}
		return string(trimEOL(b)), false, err
	}
}

func trimEOL(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
	}
	if n := len(b); n > 0 && b[n-1] == '\r' {
		b = b[:n-1]
	}
	return b
}
