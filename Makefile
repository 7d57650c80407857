# mailguard — two commands do everything on a fresh Debian machine:
#   make run    build and run the daemon on its built-in defaults
#   make test   install what the tests need (as root), then run every test with -race

GO          ?= go
BIN         := bin/mailguard
VERSION     := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -X main.Version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Debian packages the end-to-end tests run for real.
TEST_DEBS   := redis-server redis-tools nftables iptables ipset iproute2 postfix dovecot-imapd dovecot-pop3d systemd
TEST_BINS   := redis-server redis-cli nft iptables ipset ip postfix dovecot systemd-cat
# The webmail end-to-end test (e2e TestRoundcube) runs Debian's Roundcube on
# its own nginx and php-fpm instances; the packages' own site and database are
# not set up (debconf answers below): the test writes its own config.
WEBMAIL_DEBS := nginx php-fpm roundcube-core roundcube-sqlite3
WEBMAIL_DEBCONF := roundcube-core roundcube/dbconfig-install boolean false\nroundcube-core roundcube/reconfigure-webserver multiselect \nroundcube-core roundcube/restart-webserver boolean false\n
# The TOTP page's browser test drives Debian's headless chromium through
# nginx (TLS), as README's TOTP section sets it up.
TEST_DEBS   += chromium nginx
TEST_BINS   += chromium nginx

.PHONY: all build run test deps lint bench load clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/mailguard
	$(GO) build -trimpath -o bin/mailguard-load ./cmd/mailguard-load

run: build
	@echo "mailguard: starting on built-in defaults (Ctrl-C stops it)"
	$(BIN) serve $(ARGS)

# deps installs the Debian packages the tests use when one is missing and we
# are root; as a normal user the tests that need them skip with a reason.
deps:
	@missing=""; for b in $(TEST_BINS); do \
	  PATH="$$PATH:/usr/sbin:/sbin" command -v $$b >/dev/null 2>&1 || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "make deps: installing test dependencies (missing:$$missing)"; \
	    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(TEST_DEBS); \
	  else \
	    echo "make deps: missing$$missing; not root, the tests that need them will skip"; \
	  fi; \
	fi
	@missing=""; for p in $(WEBMAIL_DEBS); do \
	  [ "$$(dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null)" = installed ] || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "make deps: installing the webmail test's packages (missing:$$missing)"; \
	    printf '$(WEBMAIL_DEBCONF)' | debconf-set-selections; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(WEBMAIL_DEBS); \
	  else \
	    echo "make deps: missing$$missing; not root, the webmail test will skip"; \
	  fi; \
	fi

# lint checks the measure-tagged files too (go test -tags measure), which
# no other target compiles.
lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags measure ./...
	$(GO) run $(STATICCHECK) ./...
	$(GO) run $(STATICCHECK) -tags measure ./...

test: deps lint
	PATH="$$PATH:/usr/sbin:/sbin" $(GO) test -race -count=1 -timeout 45m ./...

# bench also runs the log benchmark: mailguard test-filter against Debian's
# fail2ban-regex (installed here, as root, when missing) on one generated
# 200,000-line mail log: see README.
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...
	./scripts/logbench.sh

# load measures both front ends, embedded and Redis store, against the load
# tool's do-nothing floor (and redis-benchmark GET), in one run: see README.
load: build
	./scripts/load.sh

clean:
	rm -rf bin
