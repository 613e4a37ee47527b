.PHONY: help test test-race lint bench fuzz demo

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

test: ## run the tests (needs PostgreSQL server binaries or WALHOOK_TEST_DATABASE_URL)
	go test -count=1 ./...

test-race: ## run the tests with the race detector, as CI does
	go test -race -count=1 ./...

lint: ## gofmt and go vet
	@test -z "$$(gofmt -l .)" || (gofmt -l . && exit 1)
	go vet ./...

bench: ## run the Go benchmarks
	go test -run '^$$' -bench . -benchmem ./...

fuzz: ## fuzz each decoder and parser for 30 seconds
	go test -run '^$$' -fuzz FuzzEncode -fuzztime 30s ./internal/change/
	go test -run '^$$' -fuzz FuzzCompound -fuzztime 30s ./internal/change/
	go test -run '^$$' -fuzz FuzzDecodeRowChange -fuzztime 30s ./cdc/
	go test -run '^$$' -fuzz FuzzParse -fuzztime 30s ./mapping/
	go test -run '^$$' -fuzz FuzzConvert -fuzztime 30s ./internal/expr/
	go test -run '^$$' -fuzz FuzzParseRetryAfter -fuzztime 30s ./deliver/

demo: ## run the end-to-end demo on a throwaway PostgreSQL
	go run ./cmd/walhook demo
