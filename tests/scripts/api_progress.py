"""Reports progress, counts and a result over the stdout protocol, with a plain log line."""

print("plain log line", flush=True)
print("::counts::total=50 success=46 failed=2 skipped=2", flush=True)
print("::progress::42 about half way", flush=True)
print('::result::{"any": "json"}', flush=True)
