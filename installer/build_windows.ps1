<#
.SYNOPSIS
Build Cairn for Windows: dist\Cairn\Cairn.exe (PyInstaller one-dir), its self-test, and the per-user installer
dist\Cairn-<version>-windows-x64-setup.exe (Inno Setup).

.DESCRIPTION
Run from anywhere:   powershell -ExecutionPolicy Bypass -File installer\build_windows.ps1
Needs Python 3.11+ (python.org; the `py` launcher is used when .venv does not exist yet) and Inno Setup 6.3+
(`winget install JRSoftware.InnoSetup` or `choco install innosetup`) unless -NoInstaller is given.
Uses .venv (made and filled with `pip install -e .[test]` when missing or lacking PyInstaller), or -Python as is.

Code signing happens only when CAIRN_SIGN_PFX (path to a .pfx certificate) is set, with CAIRN_SIGN_PASSWORD and
optionally CAIRN_SIGN_TIMESTAMP_URL; signtool comes from PATH or the Windows SDK. Cairn.exe is signed before it is
packed, the setup program after.

.PARAMETER Python
The Python to build with (default: .venv\Scripts\python.exe).
.PARAMETER NoInstaller
Stop after the app folder and its self-test.
.PARAMETER NoCheck
Skip the self-test of the built app.
.PARAMETER Iscc
Path to Inno Setup's ISCC.exe (default: PATH, then the usual install folders).
#>
param(
    [string]$Python = "",
    [switch]$NoInstaller,
    [switch]$NoCheck,
    [string]$Iscc = ""
)
$ErrorActionPreference = "Stop"
Set-StrictMode -Version Latest

$Root = Split-Path -Parent $PSScriptRoot
Set-Location $Root

function Invoke-Checked([string]$What, [scriptblock]$Block) {
    & $Block
    if ($LASTEXITCODE -ne 0) { throw "build_windows.ps1: $What failed (exit $LASTEXITCODE)" }
}

if (-not $Python) {
    $Python = Join-Path $Root ".venv\Scripts\python.exe"
    if (-not (Test-Path $Python)) {
        if (Get-Command py -ErrorAction SilentlyContinue) {
            Invoke-Checked "creating .venv" { py -3.11 -m venv .venv }
        } else {
            Invoke-Checked "creating .venv" { python -m venv .venv }
        }
    }
    # A probe that may fail: Windows PowerShell 5.1 turns a native program's stderr into a terminating error under Stop.
    $ErrorActionPreference = "Continue"
    & $Python -c "import PyInstaller, PIL, PySide6.QtSvg, langgraph" 2>$null | Out-Null
    $Probe = $LASTEXITCODE
    $ErrorActionPreference = "Stop"
    if ($Probe -ne 0) {
        Invoke-Checked "pip install" { & $Python -m pip install -q --disable-pip-version-check -e ".[test]" }
    }
}

$Version = (& $Python -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])").Trim()
$Numbers = @([regex]::Matches($Version, "\d+") | Select-Object -First 4 | ForEach-Object { $_.Value })
while ($Numbers.Count -lt 4) { $Numbers += "0" }
$FileVersion = $Numbers -join "."
Write-Host "build_windows.ps1: Cairn $Version (file version $FileVersion)"

$Dist = Join-Path $Root "dist"
$Work = Join-Path $Root "build"
$Started = Get-Date
Invoke-Checked "PyInstaller" {
    & $Python -m PyInstaller --noconfirm --clean --log-level WARN --distpath $Dist --workpath $Work installer\cairn.spec
}
$AppDir = Join-Path $Dist "Cairn"
$Exe = Join-Path $AppDir "Cairn.exe"
$SizeMB = [math]::Round(((Get-ChildItem $AppDir -Recurse -File | Measure-Object Length -Sum).Sum / 1MB), 0)
Write-Host ("build_windows.ps1: built $AppDir in {0:N0} s, $SizeMB MB" -f ((Get-Date) - $Started).TotalSeconds)

function Find-SignTool {
    $onPath = Get-Command signtool.exe -ErrorAction SilentlyContinue
    if ($onPath) { return $onPath.Source }
    $kits = Join-Path ${env:ProgramFiles(x86)} "Windows Kits\10\bin"
    $found = Get-ChildItem $kits -Recurse -Filter signtool.exe -ErrorAction SilentlyContinue |
        Where-Object { $_.FullName -match "\\x64\\" } | Sort-Object FullName -Descending | Select-Object -First 1
    if ($found) { return $found.FullName }
    throw "build_windows.ps1: CAIRN_SIGN_PFX is set but signtool.exe was not found (install the Windows SDK)"
}

function Invoke-Sign([string]$File) {
    if (-not $env:CAIRN_SIGN_PFX) {
        Write-Host "build_windows.ps1: not signing $File (CAIRN_SIGN_PFX is not set)"
        return
    }
    $signtool = Find-SignTool
    $timestamp = if ($env:CAIRN_SIGN_TIMESTAMP_URL) { $env:CAIRN_SIGN_TIMESTAMP_URL } else { "http://timestamp.digicert.com" }
    Invoke-Checked "signing $File" {
        & $signtool sign /f $env:CAIRN_SIGN_PFX /p $env:CAIRN_SIGN_PASSWORD /fd SHA256 /tr $timestamp /td SHA256 /d "Cairn" $File
    }
    Invoke-Checked "verifying the signature of $File" { & $signtool verify /pa $File }
}

Invoke-Sign $Exe

if (-not $NoCheck) {
    # Cairn.exe is a windowed program: it has no console, so the report goes to a file. The Credential Manager backend
    # must be in the bundle (--require-keyring) and work (--keyring-roundtrip stores and deletes a throwaway entry).
    $Report = Join-Path $Work "selftest-windows.json"
    Remove-Item $Report -ErrorAction SilentlyContinue
    $SelfTestArgs = "self-test --json --require-keyring --keyring-roundtrip --report `"$Report`""
    if ($env:CAIRN_SELFTEST_ARGS) { $SelfTestArgs = "$SelfTestArgs $env:CAIRN_SELFTEST_ARGS" }
    $Process = Start-Process -FilePath $Exe -ArgumentList $SelfTestArgs -Wait -PassThru -NoNewWindow
    if (Test-Path $Report) { Get-Content $Report -Encoding UTF8 | Write-Host }
    if ($Process.ExitCode -ne 0) { throw "build_windows.ps1: the self-test of $Exe failed (exit $($Process.ExitCode))" }
}

if ($NoInstaller) { exit 0 }

if (-not $Iscc) {
    $candidates = @(
        (Get-Command iscc.exe -ErrorAction SilentlyContinue | ForEach-Object { $_.Source }),
        (Join-Path ${env:ProgramFiles(x86)} "Inno Setup 6\ISCC.exe"),
        (Join-Path $env:ProgramFiles "Inno Setup 6\ISCC.exe"),
        (Join-Path $env:LOCALAPPDATA "Programs\Inno Setup 6\ISCC.exe")
    ) | Where-Object { $_ -and (Test-Path $_) }
    if (-not $candidates) {
        throw "build_windows.ps1: Inno Setup's ISCC.exe not found: winget install JRSoftware.InnoSetup (or -Iscc PATH)"
    }
    $Iscc = @($candidates)[0]
}
Invoke-Checked "Inno Setup" {
    & $Iscc /Qp "/DAppVersion=$Version" "/DFileVersion=$FileVersion" "/DDistDir=$AppDir" "/DOutputDir=$Dist" `
        installer\windows\cairn.iss
}
$Setup = Join-Path $Dist "Cairn-$Version-windows-x64-setup.exe"
Invoke-Sign $Setup
Write-Host "build_windows.ps1: $Setup"
