{
  "targets": [
    {
      "target_name": "fly",
      "sources": [
        "src/addon.c",
        "src/api.c",
        "src/buf.c",
        "src/edge.c",
        "src/error.c",
        "src/exec.c",
        "src/executor.c",
        "src/frame.c",
        "src/js.c",
        "src/keys.c",
        "src/loop.c",
        "src/quote.c",
        "src/sftp.c",
        "src/sftp_batch.c",
        "src/ssh.c",
        "src/text.c"
      ],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-fvisibility=hidden"],
      "cflags!": ["-fno-exceptions"],
      "conditions": [
        ["OS!='win'", {
          "include_dirs": [
            "<!@(pkg-config --cflags-only-I libcurl libssh2 libcjson openssl | sed 's/-I//g')"
          ],
          "libraries": [
            "<!@(pkg-config --libs libcurl libssh2 libcjson openssl)",
            "-lwslay",
            "-lpthread"
          ]
        }]
      ],
      "configurations": {
        "Debug": {
          "defines": ["FLY_DEBUG"],
          "cflags": ["-O0", "-g"]
        },
        "Release": {
          "cflags": ["-O2", "-g"]
        }
      }
    }
  ]
}
